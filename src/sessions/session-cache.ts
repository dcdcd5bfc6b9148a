import { LRUCache } from 'lru-cache';
import type { UserRole } from '../users/user.entity';

/** What the session check needs of one session, with deadlines in the database's clock (ms). */
export interface CachedSession {
  userId: string;
  role: UserRole;
  ended: boolean;
  idleExpiresAt: number;
  absoluteExpiresAt: number;
  lastSeenAt: number;
}

/**
 * A read of one session from the database that may be cached when it completes. It is void
 * when an invalidation of that session (or a flush) arrived while the read was in flight:
 * the read may have seen the row before the change, and caching it would resurrect the session.
 */
export interface FillTicket {
  readonly sessionId: string;
  readonly generation: number;
  stale: boolean;
}

/**
 * The per-instance session cache. It holds nothing it cannot prove current: entries come only
 * from database reads that no invalidation overtook, every invalidation NOTIFY removes its
 * entries, and a flush (the listening connection was lost or re-established) empties it and
 * voids every read in flight. While not `trusted` (no listening connection), it answers nothing.
 */
export class SessionCache {
  private readonly entries: LRUCache<string, CachedSession> | undefined;
  private readonly fills = new Map<string, Set<FillTicket>>();
  private generation = 0;
  private trustedSince: number | undefined;

  constructor(options: { max: number; ttlMs: number }) {
    // max 0: the documented fallback, every check reads the database.
    this.entries = options.max > 0 ? new LRUCache({ max: options.max, ttl: options.ttlMs, updateAgeOnGet: false }) : undefined;
  }

  get enabled(): boolean {
    return this.entries !== undefined;
  }

  /** True while a listening connection guarantees that every change reaches this cache. */
  get trusted(): boolean {
    return this.trustedSince !== undefined;
  }

  get size(): number {
    return this.entries?.size ?? 0;
  }

  get(sessionId: string): CachedSession | undefined {
    return this.trusted ? this.entries?.get(sessionId) : undefined;
  }

  beginFill(sessionId: string): FillTicket {
    const ticket: FillTicket = { sessionId, generation: this.generation, stale: false };
    let pending = this.fills.get(sessionId);
    if (!pending) this.fills.set(sessionId, (pending = new Set()));
    pending.add(ticket);
    return ticket;
  }

  /** Ends a fill; stores the entry only if nothing invalidated it meanwhile. Returns whether it did. */
  completeFill(ticket: FillTicket, entry: CachedSession | undefined): boolean {
    const pending = this.fills.get(ticket.sessionId);
    pending?.delete(ticket);
    if (pending && !pending.size) this.fills.delete(ticket.sessionId);
    if (!entry || ticket.stale || ticket.generation !== this.generation || !this.trusted || !this.entries) return false;
    this.entries.set(ticket.sessionId, entry);
    return true;
  }

  /**
   * An activity write of this instance is on its way for these sessions: what it sets may be
   * applied to their entries (completeWrite) unless an invalidation overtakes it meanwhile. The
   * same tickets as reads': until 0.23.0 a write's result extended whatever entry was there when
   * it came back, which could be one read afresh after a change that moved the deadline earlier
   * (an operator's UPDATE, then its NOTIFY, while the write's answer was delayed), so the entry
   * held a deadline later than the row's, which nothing would correct before the entry's TTL.
   */
  beginWrite(sessionIds: readonly string[]): FillTicket[] {
    return this.entries ? sessionIds.map((id) => this.beginFill(id)) : [];
  }

  /** Ends a write's ticket: its deadlines go to the entry only if nothing invalidated the session (or flushed) meanwhile. */
  completeWrite(ticket: FillTicket, written: { idleExpiresAt: number; lastSeenAt: number } | undefined): void {
    const pending = this.fills.get(ticket.sessionId);
    pending?.delete(ticket);
    if (pending && !pending.size) this.fills.delete(ticket.sessionId);
    if (!written || ticket.stale || ticket.generation !== this.generation) return;
    this.extend(ticket.sessionId, written.idleExpiresAt, written.lastSeenAt);
  }

  /** Updates the deadlines of an entry from a write this instance made (its own activity flush; see beginWrite). */
  extend(sessionId: string, idleExpiresAt: number, lastSeenAt: number): void {
    const entry = this.entries?.peek(sessionId);
    if (!entry || entry.ended) return;
    // Only ever later: a notification for an earlier deadline removes the entry instead.
    entry.idleExpiresAt = Math.max(entry.idleExpiresAt, idleExpiresAt);
    entry.lastSeenAt = Math.max(entry.lastSeenAt, lastSeenAt);
  }

  invalidateSession(sessionId: string): void {
    this.entries?.delete(sessionId);
    for (const ticket of this.fills.get(sessionId) ?? []) ticket.stale = true;
  }

  /** A user's role changed: every entry of theirs goes, and so does every read in flight (whose user is not known yet). */
  invalidateUser(userId: string): void {
    if (this.entries) {
      for (const [sessionId, entry] of this.entries.entries()) if (entry.userId === userId) this.entries.delete(sessionId);
    }
    for (const pending of this.fills.values()) for (const ticket of pending) ticket.stale = true;
  }

  /** Applies one NOTIFY payload of the `sessionary_sessions` channel (see the migration). */
  applyNotification(payload: string): void {
    if (payload.startsWith('s:')) this.invalidateSession(payload.slice(2));
    else if (payload.startsWith('u:')) this.invalidateUser(payload.slice(2));
    // '*' and anything this version does not understand: drop everything rather than guess.
    else this.flush();
  }

  /** Empties the cache and voids every read in flight. */
  flush(): void {
    this.generation++;
    this.entries?.clear();
  }

  /** The listening connection is up (after LISTEN): flush once more, then answer from memory. */
  trust(now = Date.now()): void {
    this.flush();
    this.trustedSince = now;
  }

  /** The listening connection is gone: changes may be missed from now on, so answer nothing. */
  distrust(): void {
    this.trustedSince = undefined;
    this.flush();
  }
}
