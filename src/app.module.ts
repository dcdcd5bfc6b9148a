import { DynamicModule, Module } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import type { AppConfig } from './config/config';
import { LogFlushOnShutdown } from './config/log-flush';
import type { SessionaryProcessOptions } from './sessionary/scheduled-jobs';
import { SessionaryModule } from './sessionary/sessionary.module';

/**
 * The service: the Sessionary module with its configuration from the environment (loaded and
 * validated once by the caller: main.ts, the CLI, the tests, so tests can run apps with their
 * own TTLs in one process), plus what only the standalone process needs: the scheduler, which
 * the root module imports (once), and none at all for a process without scheduled jobs (the CLI).
 */
@Module({})
export class AppModule {
  static forRoot(config: AppConfig, run: SessionaryProcessOptions = {}): DynamicModule {
    const scheduledJobs = run.scheduledJobs ?? true;
    return {
      module: AppModule,
      imports: [...(scheduledJobs ? [ScheduleModule.forRoot()] : []), SessionaryModule.forConfig(config, { scheduledJobs })],
      providers: [LogFlushOnShutdown],
    };
  }
}
