import { DynamicModule, Module } from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { APP_FILTER, APP_GUARD, APP_PIPE } from '@nestjs/core';
import { EventEmitterModule } from '@nestjs/event-emitter';
import { ScheduleModule } from '@nestjs/schedule';
import { TypeOrmModule } from '@nestjs/typeorm';
import { DataSource } from 'typeorm';
import { AdminModule } from './admin/admin.module';
import { AuditModule } from './audit/audit.module';
import { AuthModule } from './auth/auth.module';
import { SessionGuard } from './auth/session.guard';
import { AllExceptionsFilter } from './common/all-exceptions.filter';
import { AppValidationPipe } from './common/validation';
import type { AppConfig } from './config/config';
import { LogFlushOnShutdown } from './config/log-flush';
import { DatabaseOutageMonitor } from './database/database-outage.monitor';
import { dataSourceOptions } from './database/data-source.options';
import { runMigrationsLocked } from './database/migrate';
import { HealthModule } from './health/health.module';
import { MetricsModule } from './metrics/metrics.module';
import { RateLimitGuard } from './rate-limit/rate-limit.guard';
import { RateLimitModule } from './rate-limit/rate-limit.module';
import { SessionsModule } from './sessions/sessions.module';
import { UsersModule } from './users/users.module';

@Module({})
export class AppModule {
  /**
   * The configuration is loaded and validated once by the caller (main.ts, the CLI, the
   * tests) and handed in, so tests can run apps with their own TTLs in one process.
   */
  static forRoot(config: AppConfig): DynamicModule {
    if (!config.DATABASE_URL) throw new Error('DATABASE_URL must be resolved before the app module is built');
    const databaseUrl = config.DATABASE_URL;
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot({ isGlobal: true, ignoreEnvFile: true, skipProcessEnv: true, load: [() => config] }),
        TypeOrmModule.forRootAsync({
          useFactory: () => dataSourceOptions(databaseUrl),
          // Migrations run before any provider can query, under an advisory lock.
          dataSourceFactory: async (options) => {
            const dataSource = await new DataSource(options!).initialize();
            if (config.MIGRATIONS_RUN) await runMigrationsLocked(dataSource);
            return dataSource;
          },
        }),
        ScheduleModule.forRoot(),
        // Domain events for the host application's listeners (src/events/domain-events.ts).
        EventEmitterModule.forRoot(),
        RateLimitModule,
        AuditModule,
        UsersModule,
        SessionsModule,
        AuthModule,
        AdminModule,
        HealthModule,
        ...(config.METRICS_ENABLED ? [MetricsModule] : []),
      ],
      providers: [
        DatabaseOutageMonitor,
        LogFlushOnShutdown,
        { provide: APP_PIPE, useClass: AppValidationPipe },
        { provide: APP_FILTER, useClass: AllExceptionsFilter },
        // Global guards run in this order: count the request first, then authenticate it.
        { provide: APP_GUARD, useExisting: RateLimitGuard },
        { provide: APP_GUARD, useExisting: SessionGuard },
      ],
    };
  }
}
