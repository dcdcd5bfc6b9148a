import type { CachedSession } from './session-cache';
import type { SessionEndReason } from './session.entity';

/** The database's view of a session at one instant (its clock, not this process's). */
export interface SessionState {
  endedAt: Date | null;
  idleExpiresAt: Date;
  absoluteExpiresAt: Date;
  lastSeenAt: Date;
  now: Date;
}

export type SessionVerdict =
  | { status: 'active'; touch: boolean }
  | { status: 'ended' }
  | { status: 'expired'; reason: Extract<SessionEndReason, 'idle_timeout' | 'absolute_timeout'> };

/**
 * Whether a session may be used now, and whether its activity should be written.
 * Activity is written at most every `touchIntervalMs` so a busy client does not turn every
 * read into a write; the idle deadline is therefore extended with that granularity.
 */
export function judgeSession(s: SessionState, touchIntervalMs: number): SessionVerdict {
  if (s.endedAt) return { status: 'ended' };
  if (s.now >= s.idleExpiresAt || s.now >= s.absoluteExpiresAt) {
    return { status: 'expired', reason: expiryReason(s.idleExpiresAt, s.absoluteExpiresAt) };
  }
  return { status: 'active', touch: activityDue(s.lastSeenAt.getTime(), s.now.getTime(), touchIntervalMs) };
}

/** Activity is worth writing once the last write is a touch interval old. */
export function activityDue(lastSeenAt: number, now: number, touchIntervalMs: number): boolean {
  return now - lastSeenAt >= touchIntervalMs;
}

/** The idle deadline is capped at the absolute one; when they meet, the absolute one ended it. */
export function expiryReason(idleExpiresAt: Date, absoluteExpiresAt: Date): 'idle_timeout' | 'absolute_timeout' {
  return idleExpiresAt.getTime() < absoluteExpiresAt.getTime() ? 'idle_timeout' : 'absolute_timeout';
}

/**
 * SESSION_TOUCH_INTERVAL when set; otherwise a tenth of the idle timeout, at most a minute:
 * frequent enough that activity is never lost.
 */
export function touchIntervalMs(idleTtlSeconds: number, configuredSeconds?: number): number {
  return configuredSeconds !== undefined ? configuredSeconds * 1000 : Math.min(60_000, (idleTtlSeconds * 1000) / 10);
}

/**
 * A cached session judged without the database: `refused` (ended, or someone else's),
 * `active`, or `recheck` when a deadline is within `marginMs` of `now` (the estimated
 * database clock): the database then decides, with its own clock and with whatever activity
 * other instances wrote. A cached idle deadline can be earlier than the stored one (other
 * instances extend it without notice), never later.
 */
export function judgeCachedSession(entry: CachedSession, userId: string, now: number, marginMs: number): 'active' | 'refused' | 'recheck' {
  if (entry.ended || entry.userId !== userId) return 'refused';
  if (now + marginMs >= entry.idleExpiresAt || now + marginMs >= entry.absoluteExpiresAt) return 'recheck';
  return 'active';
}
