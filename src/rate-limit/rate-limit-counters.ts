/** What @nestjs/throttler's guard needs to decide (its ThrottlerStorageRecord). */
export interface CounterDecision {
  totalHits: number;
  /** Seconds until the window ends. */
  timeToExpire: number;
  isBlocked: boolean;
  /** Seconds until the block ends; 0 when not blocked. */
  timeToBlockExpire: number;
}

/** A throttler's settings; the database applies them when it merges a key's hits. */
export interface CounterSettings {
  ttl: number;
  limit: number;
  blockDuration: number;
}

/** Hits of one key taken for a sync. */
export interface BatchEntry {
  key: string;
  hits: number;
  generation: number;
  /**
   * When (on the counters' clock) the window these hits belong to began here: a window the
   * database starts with them began then, not at the sync (until 0.29.0 it did, and each
   * window held up to a sync interval's hits more than `ttl`: a client steady just under the
   * limit was refused). See windowAgesMs.
   */
  windowStartedAt: number;
}

/** The keys of one throttler configuration, sent in one statement. */
export interface SyncBatch {
  settings: CounterSettings;
  entries: BatchEntry[];
}

/** A key's state in PostgreSQL after the merge, with durations relative to the database's now(). */
export interface SyncedRow {
  key: string;
  hits: number;
  windowMs: number;
  blockedMs: number;
}

interface Counter {
  /**
   * Hits of the window known from the last sync (every instance's). After a local roll-over
   * it is minus the hits still in flight, so that those count for the window that ended.
   */
  base: number;
  /** Hits sent by the sync that runs now. */
  inFlight: number;
  /** Hits of this window not sent yet. */
  unsynced: number;
  windowEndsAt: number;
  blockedUntil: number;
  /** Counts local roll-overs, so that a failed sync does not bring old hits into a new window. */
  generation: number;
  settings: CounterSettings;
}

export interface RateLimitCountersOptions {
  /** Keys held at most; beyond it the oldest window is forgotten. */
  maxKeys: number;
  /** A monotonic clock in milliseconds. */
  now?: () => number;
}

/**
 * The per-instance side of the request limit: counts hits in memory and decides at once from
 * the global total of the last sync plus the hits seen here since; hands out what to sync and
 * merges back what PostgreSQL answered. A fixed window of `ttl` from a key's first hit; once
 * its total exceeds `limit` the key is blocked for `blockDuration` (hits while blocked still
 * count), exactly as the database's upsert does it.
 */
export class RateLimitCounters {
  private readonly counters = new Map<string, Counter>();
  /** Keys with unsynced hits, so a sync does not walk the whole map. */
  private readonly dirty = new Set<string>();
  /** The counter each batch entry was taken from, which eviction may have replaced by a new one since. */
  private readonly sources = new WeakMap<BatchEntry, Counter>();
  private readonly maxKeys: number;
  private readonly now: () => number;

  constructor(options: RateLimitCountersOptions) {
    this.maxKeys = options.maxKeys;
    this.now = options.now ?? (() => performance.now());
  }

  get size(): number {
    return this.counters.size;
  }

  hit(key: string, settings: CounterSettings): CounterDecision {
    const now = this.now();
    let counter = this.counters.get(key);
    if (!counter) {
      counter = this.create(key, now, settings);
    } else if (counter.windowEndsAt <= now) {
      this.rollOver(key, counter, now, settings.ttl);
    }
    counter.settings = settings;
    counter.unsynced++;
    this.dirty.add(key);
    const total = this.total(counter);
    if (counter.blockedUntil <= now && total > settings.limit) counter.blockedUntil = now + settings.blockDuration;
    return this.decision(counter, total, now);
  }

  /**
   * Takes every key's unsynced hits, grouped by settings (one statement each). The caller
   * must hand each batch back to `applySynced` or `syncFailed` before taking the next.
   */
  takeBatches(): SyncBatch[] {
    const groups = new Map<string, SyncBatch>();
    for (const key of this.dirty) {
      const counter = this.counters.get(key);
      if (!counter || counter.unsynced === 0) continue;
      const { ttl, limit, blockDuration } = counter.settings;
      const id = `${ttl}:${limit}:${blockDuration}`;
      let batch = groups.get(id);
      if (!batch) groups.set(id, (batch = { settings: counter.settings, entries: [] }));
      const entry: BatchEntry = {
        key,
        hits: counter.unsynced,
        generation: counter.generation,
        // The first hit's time, or (after a sync) when the database's window began.
        windowStartedAt: counter.windowEndsAt - counter.settings.ttl,
      };
      this.sources.set(entry, counter);
      batch.entries.push(entry);
      counter.inFlight += counter.unsynced;
      counter.unsynced = 0;
    }
    this.dirty.clear();
    return [...groups.values()];
  }

  /** How long ago each entry's window began, as its statement goes out (not when the batches were taken: earlier ones' merges take time). */
  windowAgesMs(batch: SyncBatch): number[] {
    const now = this.now();
    return batch.entries.map((entry) => Math.max(0, now - entry.windowStartedAt));
  }

  /** Merges the database's answer: its totals and deadlines replace what this instance knew. */
  applySynced(batch: SyncBatch, rows: SyncedRow[]): void {
    const now = this.now();
    const sent = new Map(batch.entries.map((e) => [e.key, e]));
    for (const row of rows) {
      const entry = sent.get(row.key);
      const counter = entry && this.sources.get(entry);
      if (!entry || !counter) continue;
      counter.inFlight -= entry.hits;
      counter.base = row.hits;
      counter.windowEndsAt = now + Math.max(0, row.windowMs);
      // The database's block is everyone's; a block decided here may be longer and stays.
      if (row.blockedMs > 0) counter.blockedUntil = Math.max(counter.blockedUntil, now + row.blockedMs);
    }
  }

  /** The database did not take the batch: its hits wait for the next sync, unless their window is over. */
  syncFailed(batch: SyncBatch): void {
    for (const entry of batch.entries) {
      const counter = this.sources.get(entry);
      if (!counter) continue;
      counter.inFlight -= entry.hits;
      if (this.counters.get(entry.key) !== counter) continue;
      if (counter.generation === entry.generation) {
        counter.unsynced += entry.hits;
        this.dirty.add(entry.key);
      } else {
        // The roll-over subtracted these hits from base; they are dropped, so give them back.
        counter.base += entry.hits;
      }
    }
  }

  /** Forgets keys whose window and block are over (their unsynced hits belong to a window that ended). */
  sweep(): void {
    const now = this.now();
    for (const [key, counter] of this.counters) {
      if (counter.windowEndsAt <= now && counter.blockedUntil <= now && counter.inFlight === 0) {
        this.counters.delete(key);
        this.dirty.delete(key);
      }
    }
  }

  private create(key: string, now: number, settings: CounterSettings): Counter {
    if (this.counters.size >= this.maxKeys) {
      // Map order is the order of window starts: the oldest window goes. Its unsynced hits are
      // lost, which only a flood of more than maxKeys clients within a window can cause.
      const oldest = this.counters.keys().next().value as string;
      this.counters.delete(oldest);
      this.dirty.delete(oldest);
    }
    const counter: Counter = {
      base: 0,
      inFlight: 0,
      unsynced: 0,
      windowEndsAt: now + settings.ttl,
      blockedUntil: 0,
      generation: 0,
      settings,
    };
    this.counters.set(key, counter);
    return counter;
  }

  private rollOver(key: string, counter: Counter, now: number, ttl: number): void {
    counter.base = -counter.inFlight;
    counter.unsynced = 0;
    counter.windowEndsAt = now + ttl;
    counter.generation++;
    // Re-inserted so that the map stays ordered by window start, oldest first.
    this.counters.delete(key);
    this.counters.set(key, counter);
  }

  private total(counter: Counter): number {
    return counter.base + counter.inFlight + counter.unsynced;
  }

  private decision(counter: Counter, total: number, now: number): CounterDecision {
    const blockedMs = counter.blockedUntil - now;
    return {
      totalHits: total,
      timeToExpire: Math.max(0, Math.ceil((counter.windowEndsAt - now) / 1000)),
      isBlocked: blockedMs > 0,
      timeToBlockExpire: Math.max(0, Math.ceil(blockedMs / 1000)),
    };
  }
}
