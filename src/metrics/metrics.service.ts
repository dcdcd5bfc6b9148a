import { Injectable, OnModuleInit } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { HttpAdapterHost } from '@nestjs/core';
import type { AppConfig } from '../config/config';
import { requireFastify } from '../common/require-fastify';
import type { FastifyInstance } from 'fastify';
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { AuditChainService } from '../audit/audit-chain.service';
import { AuditCheckpointTask } from '../audit/audit-checkpoint.task';
import { AuditPartitionsService } from '../audit/audit-partitions.service';
import { AuditShipTask, type ShipStats } from '../audit/audit-ship.task';
import { BoundedAuditService } from '../audit/bounded-audit.service';
import { RefusedRequestsTally } from '../audit/refused-requests-tally';
import { KeyRing } from '../keys/key-ring.service';
import { LoginThrottleService } from '../login-throttle/login-throttle.service';
import { PgThrottlerStorage } from '../rate-limit/pg-throttler.storage';
import { RegistrationLimitService } from '../rate-limit/registration-limit.service';
import { SessionsCleanupTask } from '../sessions/sessions-cleanup.task';
import { SessionsService } from '../sessions/sessions.service';
import { RequestDurationHistogram } from './request-duration-histogram';
import { KeyRotationTask } from '../keys/key-rotation.task';

/** Process metrics plus request latency by route template (never by raw URL: bounded labels). */
@Injectable()
export class MetricsService implements OnModuleInit {
  readonly registry = new Registry();
  /** METRICS_ENABLED: when off, nothing is measured per request (and the route answers 404). */
  private readonly enabled: boolean;
  private readonly requestDuration = new RequestDurationHistogram({
    name: 'sessionary_http_request_duration_seconds',
    help: 'HTTP request duration by method, route template and status code',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    sessions: SessionsService,
    cleanup: SessionsCleanupTask,
    boundedAudit: BoundedAuditService,
    auditPartitions: AuditPartitionsService,
    auditChain: AuditChainService,
    auditCheckpoints: AuditCheckpointTask,
    auditShipping: AuditShipTask,
    keyRing: KeyRing,
    keyRotation: KeyRotationTask,
    loginThrottle: LoginThrottleService,
    rateLimits: PgThrottlerStorage,
    registrations: RegistrationLimitService,
    refusals: RefusedRequestsTally,
    config: ConfigService<AppConfig, true>,
  ) {
    this.enabled = config.get('METRICS_ENABLED', { infer: true });
    // The process's own metrics keep an event-loop delay histogram and a GC observer running: not for nobody.
    if (this.enabled) collectDefaultMetrics({ register: this.registry });
    // Read when scraped: the sessions service keeps the numbers, this only exposes them.
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(read());
        },
      });
    // Counters read when scraped from the totals their services keep: one number, or one per label value.
    const counter = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    const countsBy = (name: string, help: string, label: string, read: () => Readonly<Record<string, number>>) =>
      new Counter({
        name,
        help,
        labelNames: [label],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const [value, count] of Object.entries(read())) this.inc({ [label]: value }, count);
        },
      });
    // Gauges read when scraped, one per label value.
    const gaugesBy = (name: string, help: string, label: string, read: () => Readonly<Record<string, number>>) =>
      new Gauge({
        name,
        help,
        labelNames: [label],
        registers: [this.registry],
        collect() {
          for (const [value, count] of Object.entries(read())) this.set({ [label]: value }, count);
        },
      });
    gauge('sessionary_session_cache_listening', '1 while the session cache is kept exact by LISTEN/NOTIFY; 0: every check reads the database', () =>
      sessions.cacheState().listening ? 1 : 0,
    );
    gauge('sessionary_session_cache_entries', 'Sessions held by this instance', () => sessions.cacheState().size);
    // This instance's view: the instance that held the partitions' lock did the work.
    gauge('sessionary_audit_retention_last_run_timestamp_seconds', 'When this instance last maintained the audit partitions (0: not yet)', () =>
      auditPartitions.stats.lastRunAt ? auditPartitions.stats.lastRunAt.getTime() / 1000 : 0,
    );
    gauge('sessionary_audit_partitions', 'Monthly partitions of audit_events at the last maintenance', () => auditPartitions.stats.partitions);
    gauge(
      'sessionary_audit_partitions_held',
      'Months of audit_events past AUDIT_RETENTION_DAYS kept at the last maintenance, each for a reason the log gives',
      () => auditPartitions.stats.heldPastRetention,
    );
    gauge(
      'sessionary_audit_closed_months_in_time_order',
      'Closed months of audit_events not yet rewritten in chain order at the last maintenance (AUDIT_ORDER_CLOSED_MONTHS does one a run)',
      () => auditPartitions.stats.closedMonthsInTimeOrder,
    );
    counter(
      'sessionary_audit_retention_dropped_events_total',
      'Audit events this instance dropped with their months past AUDIT_RETENTION_DAYS',
      () => auditPartitions.stats.droppedEvents,
    );
    // This instance's view too: one instance writes each checkpoint (alert on the newest across instances).
    countsBy(
      'sessionary_audit_checkpoints_total',
      'Audit checkpoints this instance wrote, its checkpoint ticks that failed, its checkpoints written whose line AUDIT_CHECKPOINT_FILE did not take, and those not appended there because the file holds a newer one (the table went back)',
      'outcome',
      () => ({
        written: auditChain.stats.written,
        failed: auditCheckpoints.failures,
        file_failed: auditChain.stats.fileFailures,
        file_diverged: auditChain.stats.fileDiverged,
      }),
    );
    counter(
      'sessionary_audit_checkpoint_all_buckets_hashed_total',
      "Checkpoints this instance wrote that hashed every bucket of the heads' digest (the first after an upgrade, a very large copy, or stored buckets that did not add up)",
      () => auditChain.stats.allBucketsHashed,
    );
    gauge('sessionary_audit_checkpoint_last_timestamp_seconds', 'When the last checkpoint this instance wrote was taken (0: none yet)', () =>
      auditChain.stats.lastWrittenAt ? auditChain.stats.lastWrittenAt.getTime() / 1000 : 0,
    );
    gauge(
      'sessionary_audit_checkpoint_last_duration_seconds',
      'How long the last checkpoint this instance wrote took',
      () => auditChain.stats.lastSeconds,
    );
    // This instance's view, by destination: instances shipping to one take turns (alert on the newest across them).
    const shipping = () => Object.entries(auditShipping.stats);
    const shipGauge = (name: string, help: string, read: (stats: ShipStats) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['destination'] as const,
        registers: [this.registry],
        collect() {
          for (const [destination, stats] of shipping()) this.set({ destination }, read(stats));
        },
      });
    const seconds = (at: Date | null) => (at ? at.getTime() / 1000 : 0);
    new Counter({
      name: 'sessionary_audit_ship_pieces_total',
      help: 'Pieces of the audit log this instance shipped (AUDIT_SHIP_DIR, AUDIT_SHIP_URL), and its shipping ticks that failed',
      labelNames: ['destination', 'outcome'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [destination, stats] of shipping()) {
          this.inc({ destination, outcome: 'written' }, stats.pieces);
          this.inc({ destination, outcome: 'failed' }, stats.failures);
        }
      },
    });
    shipGauge(
      'sessionary_audit_ship_through_seq',
      'The seq the newest piece this instance shipped runs through (0: none yet)',
      (s) => s.shippedThroughSeq,
    );
    shipGauge('sessionary_audit_ship_last_timestamp_seconds', 'When this instance last shipped a piece of the audit log (0: not yet)', (s) =>
      seconds(s.lastShippedAt),
    );
    shipGauge(
      'sessionary_audit_ship_caught_up_timestamp_seconds',
      'When a shipping tick of this instance last left no settled event unshipped (0: not yet); far behind the interval: shipping falls behind or fails',
      (s) => seconds(s.caughtUpAt),
    );
    gauge('sessionary_signing_key_age_seconds', 'Seconds since the current signing key started signing', () => keyRing.currentKeyAgeSeconds());
    gaugesBy(
      'sessionary_signing_keys',
      "Keys of this instance's signing-key ring that verify now, by state (stopped and retired keys are not counted)",
      'state',
      () => keyRing.keyCounts(),
    );
    gaugesBy(
      'sessionary_signing_key_rows_refused',
      "Rows of the signing-key ring this instance's last read did not trust (changed in the table, or sealed under another KEY_ENCRYPTION_KEY), by what it did: alert on any",
      'handling',
      () => keyRing.refusedRowCounts(),
    );
    gauge(
      'sessionary_session_activity_pending',
      'Sessions whose activity waits for the next batched write',
      () => sessions.cacheState().pendingActivity,
    );
    countsBy(
      'sessionary_session_cleanup_ticks_total',
      'Cleanup ticks this instance ran, or skipped because another instance had the lock or the tick',
      'outcome',
      () => ({ ran: cleanup.ticks.ran, skipped: cleanup.ticks.skipped }),
    );
    counter(
      'sessionary_session_cleanup_incomplete_ticks_total',
      'Cleanup ticks this instance ran that stopped at their time budget (half the time to the next tick) or at shutdown with sessions left; rising tick after tick, the cleanup falls behind',
      () => cleanup.ticks.incomplete,
    );
    countsBy(
      'sessionary_session_cleanup_sessions_total',
      "Sessions this instance's cleanup ticks ended at their deadlines, and deleted past SESSION_RETENTION",
      'outcome',
      () => ({ ended: cleanup.sessionCounts.ended, deleted: cleanup.sessionCounts.deleted }),
    );
    // The jobs whose work counters alone cannot tell "failing" from "nothing to do".
    const jobs = () => ({
      session_cleanup: cleanup.health,
      login_counters_prune: loginThrottle.pruneHealth,
      rate_limits_prune: rateLimits.pruneHealth,
      rate_limits_sync: rateLimits.syncHealth,
      signing_key_maintenance: keyRotation.health,
    });
    countsBy('sessionary_job_failures_total', "Runs of this instance's background jobs that failed (the log says why), by job", 'job', () =>
      Object.fromEntries(Object.entries(jobs()).map(([job, health]) => [job, health.failures])),
    );
    new Gauge({
      name: 'sessionary_job_last_success_timestamp_seconds',
      help: 'When a run of the job on this instance last ran to its end (0: not yet; a cleanup tick another instance took does not count): alert on the newest across instances',
      labelNames: ['job'] as const,
      registers: [this.registry],
      collect() {
        for (const [job, health] of Object.entries(jobs())) this.set({ job }, seconds(health.lastSucceededAt));
      },
    });
    countsBy(
      'sessionary_pruned_rows_total',
      "Expired counter rows this instance's prune jobs deleted, by table (every instance prunes: the rows are split between them)",
      'table',
      () => ({ ...loginThrottle.pruned, ...rateLimits.pruned }),
    );
    countsBy('sessionary_session_checks_total', 'Session checks by where they were answered (cache: no query)', 'source', () => {
      const { checks } = sessions.cacheState();
      return { cache: checks.cache, database: checks.database };
    });
    countsBy(
      'sessionary_refresh_failures_total',
      'Refused refreshes by reason (malformed and unknown: no known session, so only in REQUESTS_REFUSED summaries)',
      'reason',
      () => sessions.refreshFailureCounts(),
    );
    countsBy(
      'sessionary_registrations_refused_total',
      'Registrations this instance refused, by the limit: address (REGISTER_MAX_PER_IP) or total (REGISTER_MAX_TOTAL, everyone refused until its window ends); changes: username or email changes refused by the REGISTER_MAX_PER_IP allowance of their address',
      'limit',
      () => registrations.refused(),
    );
    countsBy(
      'sessionary_requests_refused_total',
      'Refusals that name no account, by kind, as summed per client IP into REQUESTS_REFUSED audit events',
      'kind',
      () => refusals.countedSinceStart(),
    );
    new Counter({
      name: 'sessionary_audit_bounded_events_total',
      help: 'Events a caller can provoke at will (REFRESH_FAILED, ACCESS_DENIED): recorded, or left out because one was recorded for the same key within the window',
      labelNames: ['type', 'outcome'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const { type, recorded, suppressed } of boundedAudit.stats()) {
          this.inc({ type, outcome: 'recorded' }, recorded);
          this.inc({ type, outcome: 'suppressed' }, suppressed);
        }
      },
    });
  }

  onModuleInit(): void {
    // The first of Sessionary's providers to touch the adapter: an application on another one stops here, saying why.
    requireFastify(this.adapterHost.httpAdapter);
    // An application context without HTTP (the CLI) has no adapter: nothing to measure.
    if (!this.adapterHost.httpAdapter || !this.enabled) return;
    const fastify = this.adapterHost.httpAdapter.getInstance<FastifyInstance>();
    fastify.addHook('onResponse', (request, reply, done) => {
      this.requestDuration.observeRequest(request.method, request.routeOptions?.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000);
      done();
    });
  }
}
