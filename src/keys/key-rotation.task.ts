import { BeforeApplicationShutdown, Inject, Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { Cron, CronExpression } from '@nestjs/schedule';
import { SCHEDULED_JOBS, SESSIONARY_CRON_JOBS } from '../sessionary/scheduled-jobs';
import type { AppConfig } from '../config/config';
import { isDatabaseUnavailable } from '../database/pg-errors';
import { KeyRotationService } from './key-rotation.service';
import { JobHealth } from '../common/job-health';
import { StoppableJob } from '../common/stoppable-job';

/**
 * Every five minutes on every instance; whichever takes the ring's advisory lock retires the
 * keys whose tokens have all expired and, when SIGNING_KEY_ROTATION_DAYS is set and the
 * current key is that old, rotates (a next key published moments ago waits for a later tick:
 * nextKeyPublicationSeconds). The age is read under the lock, so of many instances one rotates
 * and the others find a fresh key.
 */
@Injectable()
export class KeyRotationTask implements BeforeApplicationShutdown {
  private readonly logger = new Logger(KeyRotationTask.name);
  private readonly rotationDays: number | undefined;
  /** One run at a time; stopped at shutdown. */
  private readonly runs = new StoppableJob<void>();
  /** Runs that failed, and when one last ran to its end (for /metrics). */
  readonly health = new JobHealth();

  constructor(
    private readonly rotation: KeyRotationService,
    config: ConfigService<AppConfig, true>,
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
  ) {
    this.rotationDays = config.get('SIGNING_KEY_ROTATION_DAYS', { infer: true });
  }

  async beforeApplicationShutdown(): Promise<void> {
    await this.runs.stop();
  }

  @Cron(CronExpression.EVERY_5_MINUTES, { name: SESSIONARY_CRON_JOBS.signingKeyRotation, waitForCompletion: true })
  async onTick(): Promise<void> {
    // Off in this process: the application's scheduler may still fire it before ScheduledJobsCheck takes it out.
    if (!this.scheduledJobs) return;
    await this.runs.run(async (stop) => {
      // Shutting down: the scheduler's jobs stop only after every Sessionary module's hooks
      // (its module's run last), and a tick then would die with the pool (until 0.27.0).
      if (!stop.aborted) await this.handleTick();
    });
  }

  /** Never throws: nothing else would see it. */
  async handleTick(): Promise<void> {
    try {
      const result = await this.rotation.maintain(this.rotationDays);
      this.health.succeeded();
      if (result.rotated) this.logger.log(`Signing key rotated on schedule: ${result.rotated.current} signs now`);
      if (result.retired.length) this.logger.log(`Signing keys retired: ${result.retired.join(', ')}`);
      if (result.foreignNext) {
        this.logger.warn(
          `The signing-key ring's next key is ${result.foreignNext}, and this instance's SIGNING_ALGORITHM another: left as it is, ` +
            `and no scheduled rotation here (a change of SIGNING_ALGORITHM rolling out; give every instance the same setting)`,
        );
      }
    } catch (error) {
      this.health.failed();
      if (isDatabaseUnavailable(error)) this.logger.warn('Signing-key maintenance skipped: the database is unavailable');
      else this.logger.error('Signing-key maintenance failed', error instanceof Error ? error.stack : String(error));
    }
  }
}
