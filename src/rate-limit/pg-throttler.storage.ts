import { Injectable, Logger } from '@nestjs/common';
import { Cron, CronExpression } from '@nestjs/schedule';
import { ThrottlerStorage } from '@nestjs/throttler';
import { InjectDataSource } from '@nestjs/typeorm';
import { DataSource } from 'typeorm';
import { sql } from '../database/sql';

type ThrottlerStorageRecord = Awaited<ReturnType<ThrottlerStorage['increment']>>;

interface CounterRow {
  hits: number;
  window_ms: number;
  blocked_ms: number;
}

/**
 * @nestjs/throttler's storage in PostgreSQL, so the limit holds across instances: one
 * atomic upsert per request (fixed window of `ttl`, block of `blockDuration` once over).
 */
@Injectable()
export class PgThrottlerStorage implements ThrottlerStorage {
  private readonly logger = new Logger(PgThrottlerStorage.name);

  constructor(@InjectDataSource() private readonly dataSource: DataSource) {}

  async increment(key: string, ttl: number, limit: number, blockDuration: number): Promise<ThrottlerStorageRecord> {
    const { rows } = await sql<CounterRow>(
      this.dataSource.manager,
      // In DO UPDATE every expression sees the old row (r), so the block decision repeats
      // the new hit count rather than reading it.
      `INSERT INTO rate_limits AS r (key, hits, window_ends_at, blocked_until)
       VALUES ($1, 1, now() + make_interval(secs => $2 / 1000.0),
               CASE WHEN 1 > $3 THEN now() + make_interval(secs => $4 / 1000.0) END)
       ON CONFLICT (key) DO UPDATE SET
         hits = CASE WHEN r.window_ends_at <= now() THEN 1 ELSE r.hits + 1 END,
         window_ends_at = CASE WHEN r.window_ends_at <= now() THEN now() + make_interval(secs => $2 / 1000.0) ELSE r.window_ends_at END,
         blocked_until = CASE
           WHEN r.blocked_until > now() THEN r.blocked_until
           WHEN (CASE WHEN r.window_ends_at <= now() THEN 1 ELSE r.hits + 1 END) > $3 THEN now() + make_interval(secs => $4 / 1000.0)
         END
       RETURNING hits,
                 (extract(epoch FROM window_ends_at - now()) * 1000)::int AS window_ms,
                 coalesce((extract(epoch FROM blocked_until - now()) * 1000)::int, 0) AS blocked_ms`,
      [key, ttl, limit, blockDuration],
    );
    const row = rows[0];
    return {
      totalHits: row.hits,
      timeToExpire: Math.max(0, Math.ceil(row.window_ms / 1000)),
      isBlocked: row.blocked_ms > 0,
      timeToBlockExpire: Math.max(0, Math.ceil(row.blocked_ms / 1000)),
    };
  }

  /**
   * Drops counters whose window and block are over. Every instance may run it. (A separate
   * provider holds the @Cron: ThrottlerModule registers this instance under a second token,
   * and the scheduler would see its cron twice.)
   */
  async prune(): Promise<void> {
    try {
      await sql(
        this.dataSource.manager,
        `DELETE FROM rate_limits WHERE window_ends_at < now() AND (blocked_until IS NULL OR blocked_until < now())`,
      );
    } catch (error) {
      this.logger.error('Pruning rate-limit counters failed', error instanceof Error ? error.stack : String(error));
    }
  }
}

@Injectable()
export class RateLimitPruneTask {
  constructor(private readonly storage: PgThrottlerStorage) {}

  @Cron(CronExpression.EVERY_10_MINUTES, { name: 'rate-limit-prune', waitForCompletion: true })
  prune(): Promise<void> {
    return this.storage.prune();
  }
}
