import { BeforeApplicationShutdown, Inject, Injectable, Logger, OnApplicationBootstrap, Optional } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { Cron, SchedulerRegistry } from '@nestjs/schedule';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { CronTime } from 'cron';
import { DataSource, QueryRunner } from 'typeorm';
import type { AppConfig } from '../config/config';
import { sql } from '../database/sql';
import { LOCK_TAKEN, withSessionAdvisoryLock } from '../database/advisory-lock';
import { Env } from '../config/env.schema';
import { isDatabaseUnavailable } from '../database/pg-errors';
import { StoppableJob } from '../common/stoppable-job';
import { SCHEDULED_JOBS, SESSIONARY_CRON_JOBS } from '../sessionary/scheduled-jobs';
import { SessionMaintenanceService } from './session-maintenance.service';
import { JobHealth } from '../common/job-health';

// Any fixed 64-bit number works; this one spells "sesclean" in ASCII.
export const CLEANUP_LOCK_KEY = '8315173853005522286';
const BATCH_SIZE = 500;
/**
 * A tick starts no batch after this share of the time until the next tick has passed; what is
 * left waits for that tick. So ticks never run into each other (the scheduler would skip the
 * one that comes while this one works), and a backlog is worked off at the batches' own rate
 * instead of a fixed number of them a tick (until 0.13.3, 200 batches: at most 50,000 ended
 * sessions every 5 minutes, fewer than a large deployment's sessions expire at peak).
 */
const TICK_BUDGET_SHARE = 0.5;
/**
 * Batches of ending sessions run side by side, each lane on the users that hash to it and
 * appending to its own audit chain (so they never wait for each other). Each batch is
 * PostgreSQL's work (the sessions' UPDATE, the audit rows into their indexes), so two
 * connections end sessions faster than one; deleting is fast enough alone.
 */
const ENDING_LANES = 2;
/** Smaller batches for ending than for deleting: with two lanes on the box, 500 took a statement past 100 ms. */
const ENDING_BATCH_SIZE = 250;

export interface CleanupResult {
  /** Another instance holds the lock or already ran this tick, or this one is shutting down. */
  skipped: boolean;
  expired: number;
  deleted: number;
  /**
   * Every session due was ended and every one past retention deleted (each phase's last batch
   * came back short); false when the tick stopped at its time budget or at shutdown first.
   */
  complete: boolean;
}

/** When a tick stops starting batches. */
interface TickLimit {
  /** performance.now() past which no batch starts (each phase still runs one). */
  deadline: number;
  /** Aborted at shutdown: no batch starts. */
  stop: AbortSignal;
}

/** The job's name in the SchedulerRegistry. */
export const SESSIONS_CLEANUP_JOB = SESSIONARY_CRON_JOBS.sessionsCleanup;
/** The cleanup's row in scheduled_job_runs: unchanged when its scheduler name took a prefix, so old and new instances claim one tick. */
const CLEANUP_RUNS_ROW = 'sessions-cleanup';

/**
 * Every SESSION_CLEANUP_CRON tick: end sessions past their deadlines (reason and audit event
 * each) and delete ended sessions past retention, in bounded batches. Every instance
 * schedules it; a PostgreSQL advisory lock lets one of them work per tick.
 *
 * A `@Cron` job like the others. A decorator's expression is fixed when the class is loaded,
 * before configuration is validated, so it is declared with the default and moved to the
 * configured expression at bootstrap (ScheduleModule is global: its jobs are mounted before
 * this module's bootstrap hook runs). A tick works until nothing is due or half the time to
 * the next tick has passed; shutdown stops it after the batches under way.
 */
@Injectable()
export class SessionsCleanupTask implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(SessionsCleanupTask.name);
  private readonly running = new StoppableJob<CleanupResult>();
  /**
   * Ticks this instance ran and skipped (for /metrics: across instances, one runs each tick),
   * and those of its ran ticks that stopped with work left (at their budget or at shutdown).
   */
  readonly ticks = { ran: 0, skipped: 0, incomplete: 0 };
  /** Ticks that failed, and when one last ran to its end (for /metrics). */
  readonly health = new JobHealth();
  /** Sessions this instance's ticks ended at their deadlines and deleted past retention (for /metrics). */
  readonly sessionCounts = { ended: 0, deleted: 0 };

  constructor(
    private readonly sessions: SessionMaintenanceService,
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly config: ConfigService<AppConfig, true>,
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
    /** The application's scheduler (its root module imports it); none in the CLI. */
    @Optional() private readonly scheduler?: SchedulerRegistry,
  ) {}

  onApplicationBootstrap(): void {
    // Not mounted: ScheduledJobsCheck refuses the boot if it should be.
    if (!this.scheduledJobs || !this.scheduler?.doesExist('cron', SESSIONS_CLEANUP_JOB)) return;
    const configured = this.config.get('SESSION_CLEANUP_CRON', { infer: true });
    // setTime stops the job; it starts again on the new expression.
    const job = this.scheduler.getCronJob(SESSIONS_CLEANUP_JOB);
    job.setTime(new CronTime(configured));
    job.start();
  }

  /**
   * Runs before the database closes (onApplicationShutdown): a tick under way finishes the
   * batch it started, starts no other, and releases its lock. The scheduler's jobs stop only
   * after (its module's hooks run last), and a tick it fires meanwhile gets the stopped signal
   * and does nothing (until 0.27.0 it ran one batch against a closing pool).
   */
  async beforeApplicationShutdown(): Promise<void> {
    await this.running.stop();
  }

  /**
   * The scheduled second names the tick (cron fires within milliseconds of it, on every
   * instance). Returning the run's promise is what lets waitForCompletion keep ticks from overlapping.
   */
  @Cron(new Env().SESSION_CLEANUP_CRON, { name: SESSIONS_CLEANUP_JOB, waitForCompletion: true })
  async onTick(): Promise<void> {
    // Off in this process: the application's scheduler may still fire it before ScheduledJobsCheck takes it out.
    if (!this.scheduledJobs) return;
    await this.handleTick(new Date(Math.round(Date.now() / 1000) * 1000));
  }

  /**
   * The cron handler: never throws (nothing else would see it), never overlaps itself. With
   * a `tick`, only the first instance to claim that tick works; without, it works if it gets the lock.
   */
  async handleTick(tick?: Date): Promise<CleanupResult | undefined> {
    try {
      const result = await this.run(tick);
      if (!result.skipped) this.health.succeeded();
      return result;
    } catch (error) {
      this.health.failed();
      // An outage is reported by the outage monitor; one line here, not a stack per tick.
      if (isDatabaseUnavailable(error)) this.logger.warn('Session cleanup skipped: the database is unavailable');
      else this.logger.error('Session cleanup failed', error instanceof Error ? error.stack : String(error));
      return undefined;
    }
  }

  /**
   * One tick's work; a call while a tick runs shares it. `budgetMs` (by default half the time
   * until the job's next tick) bounds when batches may start.
   */
  run(tick?: Date, budgetMs?: number): Promise<CleanupResult> {
    return this.running.run((stop) => {
      const started = performance.now();
      return this.runLocked(tick, { deadline: started + (budgetMs ?? this.defaultBudgetMs()), stop });
    });
  }

  /** Half the time until the job's next tick, as the scheduler has it. */
  private defaultBudgetMs(): number {
    // Every caller has the scheduler: the service's and the bench's root module import it, and the
    // CLI (which has none) never runs the cleanup.
    const next = this.scheduler!.getCronJob(SESSIONS_CLEANUP_JOB).nextDate().toMillis();
    return Math.max(0, next - Date.now()) * TICK_BUDGET_SHARE;
  }

  private async runLocked(tick: Date | undefined, limit: TickLimit): Promise<CleanupResult> {
    if (limit.stop.aborted) return { skipped: true, expired: 0, deleted: 0, complete: false };
    const result = await withSessionAdvisoryLock(this.dataSource, CLEANUP_LOCK_KEY, async (runner) => {
      if (tick && !(await this.claimTick(runner, tick))) return this.skip();
      // Counted when claimed, so that the claims recorded in the database and these counts agree.
      this.ticks.ran++;
      const retention = this.config.get('SESSION_RETENTION', { infer: true });
      const ending = await this.inBatches(
        (lane) => this.sessions.endExpiredSessions(ENDING_BATCH_SIZE, lane),
        ENDING_LANES,
        ENDING_BATCH_SIZE,
        limit,
      );
      const deleting = await this.inBatches(() => this.sessions.deleteEndedSessions(retention, BATCH_SIZE), 1, BATCH_SIZE, limit);
      const [expired, deleted] = [ending.total, deleting.total];
      const complete = ending.complete && deleting.complete;
      this.sessionCounts.ended += expired;
      this.sessionCounts.deleted += deleted;
      if (!complete) {
        this.ticks.incomplete++;
        this.logger.warn(
          `Session cleanup stopped ${limit.stop.aborted ? 'at shutdown' : 'at its time budget'} with sessions left ` +
            `(ended ${expired} expired, deleted ${deleted} past retention); the next tick goes on`,
        );
      } else if (expired || deleted) {
        this.logger.log(`Session cleanup: ended ${expired} expired, deleted ${deleted} past retention`);
      }
      return { skipped: false, expired, deleted, complete };
    });
    return result === LOCK_TAKEN ? this.skip() : result;
  }

  private skip(): CleanupResult {
    this.ticks.skipped++;
    return { skipped: true, expired: 0, deleted: 0, complete: false };
  }

  /**
   * True for the one instance whose conditional upsert records this tick first. A recorded tick
   * more than a minute ahead of the database's clock was named by an instance whose clock ran
   * ahead (a VM restored from a snapshot, a clock stepped back since): it does not hold off
   * the ticks of the right time, which until 0.24.2 were all skipped until the real time
   * caught up with it, and nothing ended or deleted sessions meanwhile.
   */
  private async claimTick(runner: QueryRunner, tick: Date): Promise<boolean> {
    const { rows: claimed } = await sql(
      runner.manager,
      `INSERT INTO scheduled_job_runs AS j (name, last_tick, runs) VALUES ($1, $2, 1)
       ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick, runs = j.runs + 1
        WHERE j.last_tick < excluded.last_tick OR j.last_tick > now() + interval '1 minute'
       RETURNING runs`,
      [CLEANUP_RUNS_ROW, tick],
    );
    return claimed.length === 1;
  }

  /**
   * Runs batches, `lanes` at a time (each lane its own transactions and connection, given its
   * number and the number of lanes), each lane until a batch comes back short (complete) or
   * the limit is reached. Every lane runs one batch however late it is, unless shut down: the
   * deleting phase still makes progress when the ending phase used the whole budget. A lane
   * that fails stops the others after their batch under way, and the failure is thrown once
   * all have stopped: none goes on after the tick has released its lock (or past shutdown).
   */
  private async inBatches(
    batch: (lane: { index: number; of: number }) => Promise<number>,
    lanes: number,
    size: number,
    limit: TickLimit,
  ): Promise<{ total: number; complete: boolean }> {
    let total = 0;
    let complete = true;
    let failed = false;
    const lane = async (index: number) => {
      for (;;) {
        if (limit.stop.aborted || failed) return (complete = false);
        const n = await batch({ index, of: lanes }).catch((error: unknown) => {
          failed = true;
          throw error;
        });
        total += n;
        if (n < size) return;
        if (performance.now() >= limit.deadline) return (complete = false);
      }
    };
    const settled = await Promise.allSettled(Array.from({ length: lanes }, (_, index) => lane(index)));
    const failure = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failure) throw failure.reason;
    return { total, complete };
  }
}
