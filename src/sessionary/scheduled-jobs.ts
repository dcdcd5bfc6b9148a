import { Inject, Injectable, OnApplicationBootstrap, Optional } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';

/**
 * Whether this process runs Sessionary's scheduled jobs: the session cleanup, the audit
 * checkpoints, the audit shipping, the audit partitions' maintenance (months ahead, retention,
 * ordering), the signing-key rotation and the prunes of the rate-limit and login-failure counters.
 *
 * True for the service. False for a process that boots the modules to do one thing and exit
 * (the CLI; a host's own scripts): such a process must not claim a cleanup tick, write a
 * checkpoint, or drop or archive a month with whatever settings its shell happens to have
 * (until 0.16.0 the CLI did, for as long as a command ran). Without the jobs it still seals
 * events from before the chain and creates the months ahead, which its own events need.
 */
export const SCHEDULED_JOBS = Symbol('SESSIONARY_SCHEDULED_JOBS');

/** How a process runs the Sessionary module, beside its settings. */
export interface SessionaryProcessOptions {
  /** Run the scheduled jobs (default true); false for one-shot processes. */
  scheduledJobs?: boolean;
  /**
   * Register Sessionary's exception filter as a global one (default true), which then answers
   * for every route of the application, the host's too, and before the host's own global
   * filters (README, Using Sessionary inside your Nest app). false: Sessionary's routes keep it
   * (it is on their controllers), and the host's routes are the host's filters' alone.
   */
  globalExceptionFilter?: boolean;
}

/**
 * Sessionary's `@Cron` jobs, by their names in the SchedulerRegistry, which it shares with the
 * host's jobs: prefixed, so that a host's own `sessions-cleanup` is no DUPLICATE_SCHEDULER at
 * boot (unprefixed until 0.22.0). Its interval timers are named the same way.
 */
export const SESSIONARY_CRON_JOBS = {
  sessionsCleanup: 'sessionary:sessions-cleanup',
  auditPartitions: 'sessionary:audit-partitions',
  signingKeyRotation: 'sessionary:signing-key-rotation',
  rateLimitPrune: 'sessionary:rate-limit-prune',
  loginThrottlePrune: 'sessionary:login-throttle-prune',
} as const;

/**
 * Sessionary does not import `ScheduleModule.forRoot()`: the application does, once, in its
 * root module (the service's AppModule does). Since Nest 11 a dynamic module is told apart by
 * reference, so each `forRoot()` is a module of its own whose explorer mounts every `@Cron` of
 * the application again: with Sessionary importing its own, a host's jobs ran twice (and
 * Sessionary's). This checks at boot, after the scheduler has mounted the jobs, that
 * Sessionary's are there when they should run (an application without the scheduler is
 * refused, rather than left without its cleanup, checkpoints or next month's partition), and
 * takes them out of the registry when they should not. That removal comes late: the scheduler
 * starts every job at its own bootstrap, which runs first (its module is global), and other
 * modules' bootstrap hooks wait on the database before this one; so each job's handler also
 * returns at once when SCHEDULED_JOBS is false, should a tick fall in between.
 */
@Injectable()
export class ScheduledJobsCheck implements OnApplicationBootstrap {
  constructor(
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
    @Optional() private readonly registry?: SchedulerRegistry,
  ) {}

  onApplicationBootstrap(): void {
    const names = Object.values(SESSIONARY_CRON_JOBS);
    const mounted = names.filter((name) => this.registry?.doesExist('cron', name));
    if (!this.scheduledJobs) {
      // Mounted by the application's scheduler, which mounts every @Cron it finds.
      for (const name of mounted) this.registry!.deleteCronJob(name);
      return;
    }
    const missing = names.filter((name) => !mounted.includes(name));
    if (missing.length) {
      throw new Error(
        `Sessionary's scheduled jobs are not mounted (${missing.join(', ')}): import ScheduleModule.forRoot() from @nestjs/schedule ` +
          "once, in the application's root module (Sessionary does not, so that the application's own jobs run once), " +
          'or pass { scheduledJobs: false } to run none of them in this process',
      );
    }
  }
}
