import { Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { ThrottlerStorage } from '@nestjs/throttler';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource } from 'typeorm';
import { deleteInBatches } from '../database/batched-delete';
import { isDatabaseUnavailable } from '../database/pg-errors';
import { sql } from '../database/sql';
import { type CounterDecision, type CounterSettings, RateLimitCounters, SyncBatch, SyncedRow } from './rate-limit-counters';
import { JobHealth } from '../common/job-health';
import { type CounterKeyDigest, counterKeyDigest } from '../common/counter-key-digest';
import type { AppConfig } from '../config/config';

type ThrottlerStorageRecord = Awaited<ReturnType<ThrottlerStorage['increment']>>;

/** Client IPs held in memory at most, so a flood of addresses cannot exhaust it. */
export const RATE_LIMIT_MAX_KEYS = 100_000;

/** Rows a prune deletes per statement. */
const PRUNE_BATCH_SIZE = 1000;

interface MergedRow {
  key: string;
  hits: number;
  window_ms: number;
  blocked_ms: number;
}

/**
 * @nestjs/throttler's storage: counts in memory and decides at once (no query per request);
 * `sync()` merges every key's new hits into `rate_limits` in one statement and takes back the
 * global totals, so the limit holds across instances within about one sync interval's hits.
 */
@Injectable()
export class PgThrottlerStorage implements ThrottlerStorage {
  private readonly logger = new Logger(PgThrottlerStorage.name);
  private readonly counters = new RateLimitCounters({ maxKeys: RATE_LIMIT_MAX_KEYS });
  private queue: Promise<void> = Promise.resolve();
  private failing = false;
  /** Rows this instance's prunes deleted, by table (for /metrics). */
  readonly pruned = { rate_limits: 0 };
  /** Prunes that failed, and when one last ran to its end (for /metrics). */
  readonly pruneHealth = new JobHealth();
  /** Syncs whose writes failed (a batch each), and when one last wrote all it had (for /metrics). */
  readonly syncHealth = new JobHealth();

  /** `rate_limits` holds keyed digests of the counters' keys (which name client IPs), never the keys. */
  private readonly digest: CounterKeyDigest;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    config: ConfigService<AppConfig, true>,
  ) {
    this.digest = counterKeyDigest(config.get('PASSWORD_PEPPER', { infer: true }));
  }

  /** One request of `key`, decided at once from memory (RateLimitGuard's path: no promise). */
  hit(key: string, settings: CounterSettings): CounterDecision {
    return this.counters.hit(key, settings);
  }

  /** ThrottlerStorage's interface, for anything that uses the storage through @nestjs/throttler. */
  increment(key: string, ttl: number, limit: number, blockDuration: number): Promise<ThrottlerStorageRecord> {
    return Promise.resolve(this.counters.hit(key, { ttl, limit, blockDuration }));
  }

  /** Never throws, never runs twice at once: a call during a sync runs after it. */
  sync(): Promise<void> {
    // Caught here, whatever throws: one rejection left in the queue would fail every later sync.
    this.queue = this.queue
      .then(() => this.syncOnce())
      .catch((error: unknown) => this.logger.error('Rate-limit sync failed', error instanceof Error ? error.stack : String(error)));
    return this.queue;
  }

  private async syncOnce(): Promise<void> {
    this.counters.sweep();
    let failed = false;
    let wrote = false;
    for (const batch of this.counters.takeBatches()) {
      try {
        this.counters.applySynced(batch, await this.merge(batch, this.counters.windowAgesMs(batch)));
        wrote = true;
      } catch (error) {
        this.counters.syncFailed(batch);
        failed = true;
        // The log says it once; the metric counts every failed write, so an alert sees it go on.
        this.syncHealth.failed();
        // One line when it starts failing, not one per tick: each instance limits on its own meanwhile.
        if (!this.failing) {
          this.failing = true;
          this.logger.warn(
            `Rate-limit sync with PostgreSQL failed; counting per instance until it works again: ${error instanceof Error ? error.message : String(error)}`,
          );
        }
      }
    }
    if (!failed) this.syncHealth.succeeded();
    // Works again once a sync wrote and none of its batches failed: one batch failing on every
    // tick beside others that succeed (a host's settings PostgreSQL refuses) said "works again"
    // and "failed" once a tick each until 0.29.0.
    if (this.failing && wrote && !failed) {
      this.failing = false;
      this.logger.log('Rate-limit sync with PostgreSQL works again');
    }
  }

  private async merge({ settings, entries }: SyncBatch, windowAgesMs: number[]): Promise<SyncedRow[]> {
    // Digested off the request path, once a key a sync: requests count under the key itself, in memory.
    const keyOfRow = new Map(entries.map((e) => [this.digest(e.key), e.key]));
    const { rows } = await sql<MergedRow>(
      this.dataSource.manager,
      // The same window and block rules as one hit at a time, with a batch's hits added at once.
      // Settings as float8: a host's @Throttle may say 30 days (over int4's milliseconds) or a
      // fractional limit, which as int parameters failed the batch on every tick (until 0.29.0).
      // In DO UPDATE every expression sees the old row (r), so the block decision repeats the
      // new count. ORDER BY: instances lock the rows in one order, so two syncs cannot deadlock.
      // A window the statement starts (a new key, or one whose window ended) began when its
      // first hit came, age_ms before (RateLimitCounters.windowAgesMs), not now.
      `INSERT INTO rate_limits AS r (key, hits, window_ends_at, blocked_until)
       SELECT d.key, d.hits, now() + make_interval(secs => ($3::float8 - d.age_ms) / 1000),
              CASE WHEN d.hits > $4::float8 THEN now() + make_interval(secs => $5::float8 / 1000) END
       FROM unnest($1::text[], $2::int[], $6::float8[]) AS d(key, hits, age_ms)
       ORDER BY d.key
       ON CONFLICT (key) DO UPDATE SET
         hits = CASE WHEN r.window_ends_at <= now() THEN excluded.hits ELSE r.hits + excluded.hits END,
         window_ends_at = CASE WHEN r.window_ends_at <= now() THEN excluded.window_ends_at ELSE r.window_ends_at END,
         blocked_until = CASE
           WHEN r.blocked_until > now() THEN r.blocked_until
           WHEN (CASE WHEN r.window_ends_at <= now() THEN excluded.hits ELSE r.hits + excluded.hits END) > $4::float8
             THEN now() + make_interval(secs => $5::float8 / 1000)
         END
       RETURNING key, hits,
                 (extract(epoch FROM window_ends_at - now()) * 1000)::float8 AS window_ms,
                 coalesce((extract(epoch FROM blocked_until - now()) * 1000)::float8, 0) AS blocked_ms`,
      [[...keyOfRow.keys()], entries.map((e) => e.hits), settings.ttl, settings.limit, settings.blockDuration, windowAgesMs],
    );
    return rows.map((r) => ({ key: keyOfRow.get(r.key)!, hits: r.hits, windowMs: r.window_ms, blockedMs: r.blocked_ms }));
  }

  /**
   * Drops counters whose window and block are over, in batches (see deleteInBatches), until
   * done, `budgetMs` passed or `stop` aborted. Every instance may run it at the same time.
   */
  async prune(budgetMs: number, stop?: AbortSignal): Promise<number> {
    try {
      const deleted = await deleteInBatches(
        this.dataSource.manager,
        {
          table: 'rate_limits',
          orderBy: 'window_ends_at',
          where: 'window_ends_at < now() AND (blocked_until IS NULL OR blocked_until < now())',
        },
        { batchSize: PRUNE_BATCH_SIZE, budgetMs, stop },
      );
      this.pruned.rate_limits += deleted;
      this.pruneHealth.succeeded();
      return deleted;
    } catch (error) {
      this.pruneHealth.failed();
      // An outage is the outage monitor's to report (once); a prune simply runs again next time.
      if (isDatabaseUnavailable(error)) this.logger.warn('Pruning rate-limit counters skipped: the database is unavailable');
      else this.logger.error('Pruning rate-limit counters failed', error instanceof Error ? error.stack : String(error));
      return 0;
    }
  }
}
