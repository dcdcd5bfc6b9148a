import { DynamicModule, Inject, Injectable, Logger, Module, ModuleMetadata, Provider, Type } from '@nestjs/common';
import { MODULE_PATH } from '@nestjs/common/constants.js';
import { APP_FILTER, APP_GUARD, APP_PIPE, ModulesContainer } from '@nestjs/core';
import { EventEmitterModule } from '@nestjs/event-emitter';
import { TypeOrmModule } from '@nestjs/typeorm';
import { DataSource, DataSourceOptions } from 'typeorm';
import { AdminModule } from '../admin/admin.module';
import { AuditModule } from '../audit/audit.module';
import { AuthModule } from '../auth/auth.module';
import { SessionGuard } from '../auth/session.guard';
import { AllExceptionsFilter } from '../common/all-exceptions.filter';
import { AppValidationPipe } from '../common/validation';
import type { AppConfig } from '../config/config';
import { DatabaseOutageMonitor } from '../database/database-outage.monitor';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { dataSourceOptions } from '../database/data-source.options';
import { runMigrationsLocked } from '../database/migrate';
import { connectTargetOf } from '../database/connect-failure';
import { firstConnect } from '../database/first-connect';
import { warnIfCaseFoldingIsAsciiOnly } from '../database/case-folding';
import { HealthModule } from '../health/health.module';
import { KeysModule } from '../keys/keys.module';
import { MetricsModule } from '../metrics/metrics.module';
import { RateLimitGuard } from '../rate-limit/rate-limit.guard';
import { RateLimitModule } from '../rate-limit/rate-limit.module';
import { SessionsModule } from '../sessions/sessions.module';
import { UsersModule } from '../users/users.module';
import { configFromOptions, SESSIONARY_CONFIG, SessionaryConfigModule, type SessionaryOptions } from './sessionary-config';
import { SCHEDULED_JOBS, ScheduledJobsCheck, type SessionaryProcessOptions } from './scheduled-jobs';

/** The modules whose routes are API.md's, served under ROUTE_PREFIX (health and metrics stay at the root). */
const API_MODULES: Type[] = [AuthModule, UsersModule, SessionsModule, AuditModule, AdminModule];

export interface SessionaryAsyncOptions extends SessionaryProcessOptions {
  imports?: ModuleMetadata['imports'];
  inject?: Array<string | symbol | Type>;
  useFactory: (...args: never[]) => SessionaryOptions | Promise<SessionaryOptions>;
}

/**
 * Puts the API modules' routes under ROUTE_PREFIX, as RouterModule would, but from the resolved
 * configuration (RouterModule takes its paths when the module is declared, before an async
 * factory has run). Runs when providers are created, before Nest resolves the routes.
 */
@Injectable()
class SessionaryRoutePrefix {
  constructor(modules: ModulesContainer, @Inject(SESSIONARY_CONFIG) config: AppConfig) {
    for (const module of API_MODULES) Reflect.defineMetadata(MODULE_PATH + modules.applicationId, `/${config.ROUTE_PREFIX}`, module);
  }
}

/** Holds SESSIONARY_CONFIG, made with the host's imports (see SessionaryModule.withConfig). */
@Module({})
class SessionaryOptionsModule {}

/**
 * Sessionary as one Nest module: registration and login, sessions checked on every request,
 * rotating refresh tokens, the audit log, health and metrics. Its global guard protects every
 * route of the application, the host's included, unless `@Public()`.
 *
 *   SessionaryModule.forRootAsync({
 *     useFactory: () => ({ databaseUrl, jwtSecret, passwordPepper, auditHmacKey, keyEncryptionKey }),
 *   })
 *
 * Options are the configuration table's settings in camelCase (README); the service itself
 * (main.ts) is this module with its configuration from the environment. Its jobs are `@Cron`
 * methods, but for the audit checkpoints and shipping (timers registered with the
 * SchedulerRegistry by addInterval): the application imports `ScheduleModule.forRoot()` once,
 * in its root module (see ScheduledJobsCheck). A process that boots the module only to run one
 * command passes `{ scheduledJobs: false }` (see SCHEDULED_JOBS).
 */
@Module({})
export class SessionaryModule {
  static forRoot(options: SessionaryOptions, run: SessionaryProcessOptions = {}): DynamicModule {
    return SessionaryModule.withConfig({ provide: SESSIONARY_CONFIG, useValue: configFromOptions(options) }, run);
  }

  static forRootAsync(options: SessionaryAsyncOptions): DynamicModule {
    return SessionaryModule.withConfig(
      {
        provide: SESSIONARY_CONFIG,
        inject: options.inject ?? [],
        useFactory: async (...args: never[]) => configFromOptions(await options.useFactory(...args)),
      },
      options,
      options.imports,
    );
  }

  /** A configuration already validated (main.ts, the CLI, the tests: loadConfig() of the environment). */
  static forConfig(config: AppConfig, run: SessionaryProcessOptions = {}): DynamicModule {
    if (!config.DATABASE_URL) throw new Error('DATABASE_URL must be resolved before the Sessionary module is built');
    return SessionaryModule.withConfig({ provide: SESSIONARY_CONFIG, useValue: config }, run);
  }

  private static withConfig(
    configProvider: Provider,
    { scheduledJobs = true, globalExceptionFilter = true }: SessionaryProcessOptions,
    imports: ModuleMetadata['imports'] = [],
  ): DynamicModule {
    // The configuration in a module of its own, whose imports are the host's only: what its
    // factory injects is looked up there and among the host's global modules. As a provider of
    // this module it was looked up among this module's imports first, where SessionaryConfigModule's
    // ConfigService (made from this very configuration) answered for a host's global
    // ConfigService: a circular dependency, and no boot (until 0.29.0).
    const options: DynamicModule = { module: SessionaryOptionsModule, imports, providers: [configProvider], exports: [SESSIONARY_CONFIG] };
    return {
      module: SessionaryModule,
      // The configuration is reachable from every Sessionary module, under its own token only.
      global: true,
      imports: [
        options,
        TypeOrmModule.forRootAsync({
          // Named: a host's own default data source stays the host's.
          name: SESSIONARY_DATA_SOURCE,
          inject: [SESSIONARY_CONFIG],
          // TypeORM's own migrationsRun carries the setting to the factory below, which runs
          // them itself: before any provider can query, under an advisory lock.
          useFactory: (config: AppConfig) => ({
            ...dataSourceOptions(config.DATABASE_URL!, {
              poolMax: config.DATABASE_POOL_MAX,
              connectionLifetime: config.DATABASE_CONNECTION_LIFETIME,
            }),
            migrationsRun: config.MIGRATIONS_RUN,
            // Never TypeOrmModule's retries (a stack trace each): the factory tries again itself
            // while the database does not answer yet, one line a try naming the server, and a
            // schema refused as another application's, or a failed migration, which would fail
            // alike every time, stops the boot at once, saying why (until 0.20.2, after ten
            // "Unable to connect" lines and 27 s).
            toRetry: () => false,
          }),
          dataSourceFactory: async (options) => {
            const { migrationsRun, ...rest } = options as DataSourceOptions & { url: string };
            return firstConnect(
              async () => {
                const dataSource = await new DataSource({ ...rest, migrationsRun: false } as DataSourceOptions).initialize();
                try {
                  if (migrationsRun) await runMigrationsLocked(dataSource);
                  await warnIfCaseFoldingIsAsciiOnly(dataSource, new Logger('Database'));
                } catch (error) {
                  // Its pool closed: a boot that stops leaves no connection behind.
                  await dataSource.destroy().catch(() => undefined);
                  throw error;
                }
                return dataSource;
              },
              connectTargetOf(rest.url),
              new Logger('Database'),
            );
          },
        }),
        // No ScheduleModule.forRoot(): the application imports it once (see ScheduledJobsCheck).
        // Domain events for the host application's listeners (src/events/domain-events.ts).
        EventEmitterModule.forRoot(),
        SessionaryConfigModule,
        RateLimitModule,
        AuditModule,
        UsersModule,
        SessionsModule,
        KeysModule,
        AuthModule,
        AdminModule,
        HealthModule,
        MetricsModule,
      ],
      providers: [
        { provide: SCHEDULED_JOBS, useValue: scheduledJobs },
        ScheduledJobsCheck,
        SessionaryRoutePrefix,
        DatabaseOutageMonitor,
        { provide: APP_PIPE, useClass: AppValidationPipe },
        ...(globalExceptionFilter ? [{ provide: APP_FILTER, useClass: AllExceptionsFilter }] : []),
        // Global guards run in this order: count the request first, then authenticate it.
        { provide: APP_GUARD, useExisting: RateLimitGuard },
        { provide: APP_GUARD, useExisting: SessionGuard },
      ],
      // DatabaseOutageMonitor and AuditModule's RefusedRequestsTally: for SessionaryRoutesFilter on every controller.
      exports: [options, SCHEDULED_JOBS, DatabaseOutageMonitor, AuthModule, UsersModule, SessionsModule, AuditModule, KeysModule],
    };
  }
}
