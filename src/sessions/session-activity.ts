import { Logger } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { sql } from '../database/sql';

export interface ActivityWrite {
  sessionId: string;
  idleExpiresAt: Date;
  lastSeenAt: Date;
}

export interface ActivityBufferOptions {
  idleTtlSeconds: number;
  intervalMs: number;
  /** Bound on sessions waiting for a write (the oldest are written at once beyond it). */
  maxPending?: number;
  /** Told what each write made of the sessions it touched (the cache follows its own writes). */
  onWritten?: (writes: ActivityWrite[], missing: string[]) => void;
}

/**
 * Activity (last seen, idle extension) collected in memory and written in one statement per
 * flush, at most every `intervalMs`, instead of one write per request. Activity on a session
 * whose idle deadline is near is written at the next tick of the event loop, so that by the
 * deadline every instance's activity is in the database (another instance re-reads the row
 * before it declares the session expired).
 */
export class SessionActivityBuffer {
  private readonly logger = new Logger(SessionActivityBuffer.name);
  private pending = new Map<string, number>();
  private readonly maxPending: number;
  private timer: NodeJS.Timeout | undefined;
  private soon: NodeJS.Immediate | undefined;
  private flushing: Promise<void> | undefined;
  private flushAgain = false;
  private failing = false;

  constructor(
    private readonly dataSource: DataSource,
    private readonly options: ActivityBufferOptions,
  ) {
    this.maxPending = options.maxPending ?? 100_000;
  }

  start(): void {
    this.timer ??= setInterval(() => void this.flush(), this.options.intervalMs).unref();
  }

  /** Writes what is pending and stops the timer (shutdown). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.soon) clearImmediate(this.soon);
    this.soon = undefined;
    await this.flushing;
    await this.flush();
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  /** Notes activity at `seenAt` (database clock, ms); `urgent` writes it without waiting for the tick. */
  record(sessionId: string, seenAt: number, urgent: boolean): void {
    const previous = this.pending.get(sessionId);
    if (previous === undefined || seenAt > previous) this.pending.set(sessionId, seenAt);
    if (urgent || this.pending.size >= this.maxPending) this.soon ??= setImmediate(() => void this.flush());
  }

  /** One UPDATE for every session with pending activity; never moves a deadline earlier, never revives an ended session. */
  flush(): Promise<void> {
    this.soon = undefined;
    // One write at a time; a flush asked for meanwhile (urgent activity) follows right after it.
    if (this.flushing) {
      this.flushAgain = true;
      return this.flushing;
    }
    this.flushing = this.write().finally(() => {
      this.flushing = undefined;
      if (this.flushAgain && this.timer) {
        this.flushAgain = false;
        void this.flush();
      }
    });
    return this.flushing;
  }

  private async write(): Promise<void> {
    if (!this.pending.size) return;
    const batch = this.pending;
    this.pending = new Map();
    const ids = [...batch.keys()];
    try {
      const { rows } = await sql<{ id: string; idle_expires_at: Date; last_seen_at: Date }>(
        this.dataSource.manager,
        `UPDATE sessions s
            SET last_seen_at = GREATEST(s.last_seen_at, a.seen),
                idle_expires_at = GREATEST(s.idle_expires_at, LEAST(a.seen + make_interval(secs => $3), s.absolute_expires_at))
           FROM (SELECT unnest($1::uuid[]) AS id, to_timestamp(unnest($2::float8[]) / 1000.0) AS seen) a
          WHERE s.id = a.id AND s.ended_at IS NULL AND s.idle_expires_at > now()
          RETURNING s.id, s.idle_expires_at, s.last_seen_at`,
        [ids, ids.map((id) => batch.get(id)), this.options.idleTtlSeconds],
      );
      if (this.failing) this.logger.log('Session activity is written again');
      this.failing = false;
      const written = new Set(rows.map((r) => r.id));
      this.options.onWritten?.(
        rows.map((r) => ({ sessionId: r.id, idleExpiresAt: r.idle_expires_at, lastSeenAt: r.last_seen_at })),
        ids.filter((id) => !written.has(id)),
      );
    } catch (error) {
      // Keep the activity for the next attempt (newer activity wins), within the bound.
      for (const [id, seen] of batch) {
        if (this.pending.size >= this.maxPending) break;
        if (!((this.pending.get(id) ?? 0) > seen)) this.pending.set(id, seen);
      }
      if (!this.failing) {
        this.logger.warn(`Writing session activity failed; retrying every tick (${error instanceof Error ? error.message : String(error)})`);
      }
      this.failing = true;
    }
  }
}
