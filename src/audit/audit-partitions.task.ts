import { BeforeApplicationShutdown, Inject, Injectable, Logger, OnApplicationBootstrap } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { Cron, CronExpression } from '@nestjs/schedule';
import type { AppConfig } from '../config/config';
import { assertWritableDirectory } from '../config/writable-paths';
import { StoppableJob } from '../common/stoppable-job';
import { isDatabaseUnavailable } from '../database/pg-errors';
import { SCHEDULED_JOBS, SESSIONARY_CRON_JOBS } from '../sessionary/scheduled-jobs';
import { AuditPartitionsService, MaintenanceResult } from './audit-partitions.service';

/**
 * Keeps audit_events' months ahead created and applies AUDIT_RETENTION_DAYS: at boot and every
 * hour on every instance (an advisory lock lets one work; the rest is cheap when nothing is due).
 * Shutdown waits for a run under way. Without scheduled jobs (the CLI) it only creates the
 * months ahead at boot, before the process writes, and never applies retention or reorders.
 */
@Injectable()
export class AuditPartitionsTask implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(AuditPartitionsTask.name);
  /** One run at a time; stopped at shutdown. */
  private readonly runs = new StoppableJob<MaintenanceResult | undefined>();

  constructor(
    private readonly partitions: AuditPartitionsService,
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
    private readonly config: ConfigService<AppConfig, true>,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    const archiveDir = this.config.get('AUDIT_ARCHIVE_DIR', { infer: true });
    // Retention archives a month before it drops it: a month later is too late to find the directory unwritable.
    if (this.scheduledJobs && archiveDir) await assertWritableDirectory('AUDIT_ARCHIVE_DIR', archiveDir);
    if (this.scheduledJobs) void this.handleTick();
    else await this.partitions.createMonthsAhead();
  }

  async beforeApplicationShutdown(): Promise<void> {
    this.partitions.stopWaiting();
    await this.runs.stop();
  }

  @Cron(CronExpression.EVERY_HOUR, { name: SESSIONARY_CRON_JOBS.auditPartitions, waitForCompletion: true })
  async onTick(): Promise<void> {
    // Off in this process: the application's scheduler may still fire it before ScheduledJobsCheck takes it out.
    if (this.scheduledJobs) await this.handleTick();
  }

  /**
   * Never throws (nothing else would see it), never overlaps itself. Does nothing once the
   * shutdown began: the scheduler's jobs stop only after every Sessionary module's hooks, and a
   * tick then would die with the pool (until 0.27.0).
   */
  handleTick(): Promise<MaintenanceResult | undefined> {
    return this.runs.run(async (stop) => {
      if (stop.aborted) return undefined;
      try {
        return await this.partitions.maintain();
      } catch (error) {
        if (isDatabaseUnavailable(error)) this.logger.warn('Audit partition maintenance skipped: the database is unavailable');
        else this.logger.error('Audit partition maintenance failed', error instanceof Error ? error.stack : String(error));
        return undefined;
      }
    });
  }
}
