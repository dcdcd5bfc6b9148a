import { BeforeApplicationShutdown, Inject, Injectable } from '@nestjs/common';
import { Cron, CronExpression } from '@nestjs/schedule';
import { SCHEDULED_JOBS, SESSIONARY_CRON_JOBS } from '../sessionary/scheduled-jobs';
import { StoppableJob } from '../common/stoppable-job';
import { PgThrottlerStorage } from './pg-throttler.storage';

/** At most half the ten minutes between runs; what is left waits for the next. */
const PRUNE_BUDGET_MS = 5 * 60_000;

/**
 * Deletes finished counters from `rate_limits`. A provider of its own because ThrottlerModule
 * registers the storage under a second token, and the scheduler would see a cron on it twice.
 */
@Injectable()
export class RateLimitPruneTask implements BeforeApplicationShutdown {
  private readonly pruning = new StoppableJob<number>();

  constructor(
    private readonly storage: PgThrottlerStorage,
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
  ) {}

  @Cron(CronExpression.EVERY_10_MINUTES, { name: SESSIONARY_CRON_JOBS.rateLimitPrune, waitForCompletion: true })
  async onTick(): Promise<void> {
    // Off in this process: the application's scheduler may still fire it before ScheduledJobsCheck takes it out.
    if (this.scheduledJobs) await this.prune();
  }

  /** One run, as the job's tick does it; a run under way is joined, not repeated. */
  prune(): Promise<number> {
    return this.pruning.run((stop) => this.storage.prune(PRUNE_BUDGET_MS, stop));
  }

  /** Lets a prune under way finish its batch before the database closes, and start no other. */
  async beforeApplicationShutdown(): Promise<void> {
    await this.pruning.stop();
  }
}
