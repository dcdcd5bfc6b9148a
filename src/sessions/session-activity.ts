import { Logger } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { sql } from '../database/sql';

/** How soon a flush comes again for sessions that another transaction held locked. */
const BUSY_RETRY_MS = 100;
/** The first pause before a failed write is tried again (doubling, up to the tick). */
const FAILURE_RETRY_MS = 1_000;
/** Sessions per statement of a write (see write()). */
const CHUNK_SIZE = 5_000;
/**
 * How long stop() goes on writing what is pending (sessions locked elsewhere, failed writes):
 * well within SHUTDOWN_TIMEOUT (25 s by default), which the other shutdown steps share.
 */
const STOP_DEADLINE_MS = 5_000;

export interface ActivityWrite {
  sessionId: string;
  idleExpiresAt: Date;
  lastSeenAt: Date;
}

export interface ActivityBufferOptions {
  idleTtlSeconds: number;
  intervalMs: number;
  /** Sessions waiting for a write past which a write starts at once, not at the next tick. */
  maxPending?: number;
  /**
   * Told as each write is sent, with its sessions; answers the function told, once that write
   * is done, what it made of them, or undefined when it failed. Asked before the statement, so
   * that the cache, which follows its own writes, can tell what an invalidation overtook while
   * the write was on its way (see SessionCache.beginWrite).
   */
  onWrite?: (sessionIds: string[]) => (outcome: ActivityWriteOutcome | undefined) => void;
}

/** What one write made of its sessions: the deadlines it set, and those it found ended or past their deadline. */
export interface ActivityWriteOutcome {
  writes: ActivityWrite[];
  missing: string[];
}

/**
 * Activity (last seen, idle extension) collected in memory and written at most every
 * `intervalMs` (one statement per chunkSize sessions), instead of one write per request. Activity on a session
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
  /** A flush again shortly after one that found sessions locked by another transaction, or failed. */
  private retry: NodeJS.Timeout | undefined;
  /** The pause before the next attempt after failed writes (0: the last write did not fail). */
  private failureRetryMs = 0;
  private stopped = false;
  /** While stop() writes what is pending: when it gives up (performance.now()). */
  private stopDeadline: number | undefined;
  /** See CHUNK_SIZE (a field so that tests can lower it). */
  chunkSize = CHUNK_SIZE;
  /** See STOP_DEADLINE_MS (a field so that tests can shorten it). */
  stopDeadlineMs = STOP_DEADLINE_MS;

  constructor(
    private readonly dataSource: DataSource,
    private readonly options: ActivityBufferOptions,
  ) {
    this.maxPending = options.maxPending ?? 100_000;
  }

  start(): void {
    this.timer ??= setInterval(() => void this.flush(), this.options.intervalMs).unref();
  }

  /**
   * Stops the timer and writes what is pending (shutdown): it resolves once everything recorded
   * before it resolves is written, activity noted during a write in flight included, trying
   * sessions locked elsewhere and failed writes again, or once stopDeadlineMs has passed (with a
   * warning naming what was not written). Until 0.24.1 activity noted during its last write, and
   * sessions that write found locked or failed on, were left pending with no tick to write them.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.soon) clearImmediate(this.soon);
    this.soon = undefined;
    clearTimeout(this.retry);
    this.retry = undefined;
    const deadline = performance.now() + this.stopDeadlineMs;
    this.stopDeadline = deadline;
    try {
      let attempted = false;
      for (;;) {
        // A write in flight, and the one that follows it for what was noted meanwhile.
        while (this.flushing) await this.flushing;
        if (!this.pending.size) return;
        const left = deadline - performance.now();
        if (left <= 0) {
          this.logger.warn(`Stopped before the activity of ${this.pending.size} session(s) could be written (${this.stopDeadlineMs / 1000} s)`);
          return;
        }
        // What the last attempt left (locked elsewhere, or a failed write): not at once again.
        if (attempted) await new Promise((resolve) => setTimeout(resolve, Math.min(left, this.failureRetryMs || BUSY_RETRY_MS)));
        attempted = true;
        await this.flush();
      }
    } finally {
      this.stopDeadline = undefined;
    }
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Notes activity at `seenAt` (database clock, ms); `urgent` writes it without waiting for the
   * tick. Once stopped (shutdown: requests are still answered until the server closes, and the
   * pool after it), every activity is written at once: no tick will come for it.
   */
  record(sessionId: string, seenAt: number, urgent: boolean): void {
    const previous = this.pending.get(sessionId);
    if (previous === undefined || seenAt > previous) this.pending.set(sessionId, seenAt);
    if (urgent || this.stopped || this.pending.size >= this.maxPending) this.soon ??= setImmediate(() => void this.flush());
  }

  /**
   * Writes every session with pending activity (an UPDATE per chunkSize of them); never moves a
   * deadline earlier, never revives an ended session, and never waits for a session's row lock
   * (see writeChunk()).
   */
  flush(): Promise<void> {
    this.soon = undefined;
    // One write at a time; a flush asked for meanwhile (urgent activity, or any once stopped)
    // follows right after it. Not only while the timer runs: once stopped, nothing else would
    // write what was noted during the last write (until 0.24.1).
    if (this.flushing) {
      this.flushAgain = true;
      return this.flushing;
    }
    this.flushing = this.write().finally(() => {
      this.flushing = undefined;
      if (this.flushAgain) {
        this.flushAgain = false;
        void this.flush();
      }
    });
    return this.flushing;
  }

  /**
   * Writes the pending batch chunkSize sessions per statement, each statement its own short
   * transaction: one statement over the whole batch (up to SESSION_CACHE_MAX sessions) could
   * run past the pool's statement_timeout (see writeChunk), failing again at every attempt while
   * the sessions in use reached their idle deadline (until 0.24.1). Each statement locks its
   * rows in id order and skips those locked elsewhere, so it never waits for a lock: the chunks
   * need no order between them (sorting the ids took seconds of the event loop at a million).
   * A failed chunk keeps itself and the chunks after it pending for the next attempt.
   */
  private async write(): Promise<void> {
    if (!this.pending.size) return;
    const batch = this.pending;
    this.pending = new Map();
    const ids = [...batch.keys()];
    const chunkSize = Math.max(1, this.chunkSize);
    let busy = false;
    for (let start = 0; start < ids.length; start += chunkSize) {
      if (this.stopDeadline !== undefined && performance.now() >= this.stopDeadline) {
        // stop() gives up: what is left stays pending, counted in its warning.
        this.keepPending(batch, ids.slice(start));
        return;
      }
      const chunk = ids.slice(start, start + chunkSize);
      const settle = this.options.onWrite?.(chunk);
      try {
        busy = (await this.writeChunk(chunk, batch, settle)) || busy;
      } catch (error) {
        settle?.(undefined);
        this.keepPending(batch, ids.slice(start));
        if (!this.failing) {
          this.logger.warn(`Writing session activity failed; retrying (${error instanceof Error ? error.message : String(error)})`);
        }
        this.failing = true;
        this.retryAfterFailure();
        return;
      }
    }
    if (this.failing) this.logger.log('Session activity is written again');
    this.failing = false;
    this.failureRetryMs = 0;
    if (busy && this.timer) {
      this.retry ??= setTimeout(() => {
        this.retry = undefined;
        void this.flush();
      }, BUSY_RETRY_MS).unref();
    }
  }

  /** One statement for `ids`; answers whether some of them were locked elsewhere (kept pending). */
  private async writeChunk(
    ids: string[],
    batch: Map<string, number>,
    settle: ((outcome: ActivityWriteOutcome | undefined) => void) | undefined,
  ): Promise<boolean> {
    // The rows are locked first, SKIP LOCKED: a batch holds many users' sessions in the order
    // activity came, and waiting for one locked by another transaction that locks several of a
    // user's sessions in its own order (a password change ending the others, a login at the
    // session limit, another instance's batch) could deadlock with it, failing that request
    // (until 0.20.2). A session locked elsewhere is written by the next flush, shortly after.
    // The last part names them: active as of this statement's snapshot, and not locked here
    // (NOT EXISTS, planned as an anti-join. NOT IN, until 0.24.1, is planned as a subplan, hashed
    // only while the planner expects the hash to fit work_mem, else scanned again for every row:
    // 26 s for 20,000 sessions at a work_mem of 64 kB, against 1 s).
    // Activity is never later than the database's now (an instance's estimate of that clock
    // may run ahead), so it cannot carry an idle deadline beyond what a request now would.
    const { rows } = await sql<{ id: string; idle_expires_at: Date | null; last_seen_at: Date | null; written: boolean }>(
      this.dataSource.manager,
      `WITH a AS (SELECT v.id, LEAST(to_timestamp(v.ms / 1000.0), now()) AS seen FROM unnest($1::uuid[], $2::float8[]) AS v(id, ms)),
       locked AS (
         SELECT id FROM sessions
          WHERE id = ANY($1::uuid[]) AND ended_at IS NULL AND idle_expires_at > now()
          ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
       ),
       written AS (
         UPDATE sessions s
            SET last_seen_at = GREATEST(s.last_seen_at, a.seen),
                idle_expires_at = GREATEST(s.idle_expires_at, LEAST(a.seen + make_interval(secs => $3), s.absolute_expires_at))
           FROM a
          WHERE s.id = a.id AND s.id IN (SELECT id FROM locked) AND s.ended_at IS NULL AND s.idle_expires_at > now()
          RETURNING s.id, s.idle_expires_at, s.last_seen_at
       )
       SELECT id, idle_expires_at, last_seen_at, true AS written FROM written
       UNION ALL
       SELECT id, NULL, NULL, false FROM sessions
        WHERE id = ANY($1::uuid[]) AND ended_at IS NULL AND idle_expires_at > now()
          AND NOT EXISTS (SELECT 1 FROM locked l WHERE l.id = sessions.id)`,
      [ids, ids.map((id) => batch.get(id)), this.options.idleTtlSeconds],
    );
    const writes = rows.filter((r) => r.written);
    const busy = rows.filter((r) => !r.written).map((r) => r.id);
    const answered = new Set(rows.map((r) => r.id));
    this.keepPending(batch, busy);
    settle?.({
      writes: writes.map((r) => ({ sessionId: r.id, idleExpiresAt: r.idle_expires_at!, lastSeenAt: r.last_seen_at! })),
      missing: ids.filter((id) => !answered.has(id)),
    });
    return busy.length > 0;
  }

  /**
   * A failed write is tried again after 1 s, then 2, 4, … up to the tick: waiting for the tick
   * (a minute with the defaults) after one failed statement (a connection reset, a failover)
   * let the session's stored idle deadline pass meanwhile, so that the cleanup ended a session
   * in use as idle (until 0.23.0).
   */
  private retryAfterFailure(): void {
    if (this.retry) return;
    this.failureRetryMs = Math.min(this.options.intervalMs, this.failureRetryMs ? this.failureRetryMs * 2 : FAILURE_RETRY_MS);
    // Stopped (or not started): stop() waits that long itself before trying again.
    if (!this.timer) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.flush();
    }, this.failureRetryMs).unref();
  }

  /**
   * Keeps the given sessions' activity for the next attempt (newer activity wins), all of it:
   * the map holds one entry a session this instance serves, so it is bounded by them. (Until
   * 0.24.2 it stopped at maxPending, which the activity noted during the failed write had
   * filled first: the older batch was dropped without a word, and its sessions ended idle
   * though they had been used.)
   */
  private keepPending(batch: Map<string, number>, ids: Iterable<string>): void {
    for (const id of ids) {
      const seen = batch.get(id)!;
      if (!((this.pending.get(id) ?? 0) > seen)) this.pending.set(id, seen);
    }
  }
}
