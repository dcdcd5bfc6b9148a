import { BeforeApplicationShutdown, Inject, Injectable, Logger, OnApplicationBootstrap, OnModuleInit, Optional } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { SchedulerRegistry } from '@nestjs/schedule';
import type { AppConfig } from '../config/config';
import { assertAppendable } from '../config/writable-paths';
import { StoppableJob } from '../common/stoppable-job';
import { isDatabaseUnavailable } from '../database/pg-errors';
import { SCHEDULED_JOBS } from '../sessionary/scheduled-jobs';
import type { Checkpoint } from './audit-chain';
import { AuditChainService } from './audit-chain.service';
import { AuditService } from './audit.service';

const JOB_NAME = 'sessionary:audit-checkpoint';

/**
 * At boot: refuses an AUDIT_HMAC_KEY the log was not written with, then seals the events written before the hash chain (before the instance serves, so that
 * no new event of this version can precede them). Then, where scheduled jobs run, checks every half
 * AUDIT_CHECKPOINT_INTERVAL, and whenever this instance has appended AUDIT_CHECKPOINT_EVERY
 * events, whether a checkpoint is due; every instance does, an advisory lock and the last
 * checkpoint's age and max seq let one of them write it.
 *
 * Registered with the SchedulerRegistry (like the cleanup task) because its period comes from
 * configuration.
 */
@Injectable()
export class AuditCheckpointTask implements OnModuleInit, OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(AuditCheckpointTask.name);
  /** One tick at a time; stopped at shutdown. */
  private readonly ticks = new StoppableJob<Checkpoint | undefined>();
  private sinceCheck = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Ticks whose checkpoint failed (the database unavailable included); the metrics read it. */
  failures = 0;

  constructor(
    private readonly chain: AuditChainService,
    private readonly audit: AuditService,
    private readonly config: ConfigService<AppConfig, true>,
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
    /** The application's scheduler (its root module imports it); none in the CLI. */
    @Optional() private readonly scheduler?: SchedulerRegistry,
  ) {}

  /**
   * Before anything is written with the key, in every process (the CLI's too), and before any
   * module starts a connection or a timer of its own at bootstrap (a boot refused in a host's
   * process, or in a test's, leaves none running): see assertKeyWritesThisLog. Then the seqs'
   * sequence is moved past the log if a restore set it back (catchUpSeqSequence).
   */
  async onModuleInit(): Promise<void> {
    await this.chain.assertKeyWritesThisLog();
    await this.chain.catchUpSeqSequence();
  }

  async onApplicationBootstrap(): Promise<void> {
    await this.chain.sealPending();
    // Without scheduled jobs (the CLI) the service's instances write the checkpoints, this
    // process's events included: theirs come due by age and by the newest seq, not by who wrote.
    if (!this.scheduledJobs) return;
    const file = this.config.get('AUDIT_CHECKPOINT_FILE', { infer: true });
    if (file) await assertAppendable('AUDIT_CHECKPOINT_FILE', file);
    const every = this.config.get('AUDIT_CHECKPOINT_EVERY', { infer: true });
    this.audit.onAppended = (count) => {
      this.sinceCheck += count;
      if (this.sinceCheck >= every) {
        this.sinceCheck = 0;
        void this.handleTick();
      }
    };
    const periodMs = Math.max(1000, Math.floor((this.config.get('AUDIT_CHECKPOINT_INTERVAL', { infer: true }) * 1000) / 2));
    this.timer = setInterval(() => void this.handleTick(), periodMs);
    this.timer.unref();
    this.scheduler?.addInterval(JOB_NAME, this.timer);
  }

  /**
   * Waits for a checkpoint under way (its copy may take seconds at a million chains) and starts
   * no other: until 0.27.0 nothing waited, and the pool closed under it, so the checkpoint was
   * rolled back ("skipped: the database is unavailable") or committed without reaching
   * AUDIT_CHECKPOINT_FILE; and the last audit events of the shutdown (the refusal summaries)
   * could start one. The scheduler clears the interval only after (its module's hooks run last).
   */
  async beforeApplicationShutdown(): Promise<void> {
    clearInterval(this.timer);
    this.audit.onAppended = undefined;
    await this.ticks.stop();
  }

  /** Never throws (nothing else would see it), never overlaps itself; does nothing once the shutdown began. */
  handleTick(): Promise<Checkpoint | undefined> {
    return this.ticks.run(async (stop) => (stop.aborted ? undefined : this.tick()));
  }

  private async tick(): Promise<Checkpoint | undefined> {
    try {
      return await this.chain.checkpoint();
    } catch (error) {
      this.failures++;
      if (isDatabaseUnavailable(error)) this.logger.warn('Audit checkpoint skipped: the database is unavailable');
      else this.logger.error('Audit checkpoint failed', error instanceof Error ? error.stack : String(error));
      return undefined;
    }
  }
}
