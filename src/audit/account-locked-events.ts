import type { ClientContext } from '../common/client-context';
import type { AuditEventInput } from './audit.service';

/** A lock that a failed attempt set on one of the login throttle's counters. */
export interface LockSet {
  /** `identifier`: the account named at login; `ip`: the client's address (names no user). */
  scope: 'identifier' | 'ip';
  seconds: number;
}

/**
 * One ACCOUNT_LOCKED event per lock a failed attempt set. The throttle only counts; the
 * callers (login, current-password checks) record what it decided, in the transaction of
 * their own failure event.
 */
export function accountLockedEvents(locks: readonly LockSet[], userId: string | null, client: ClientContext, sessionId?: string): AuditEventInput[] {
  return locks.map((lock) => ({
    type: 'ACCOUNT_LOCKED',
    userId: lock.scope === 'identifier' ? userId : null,
    sessionId,
    client,
    metadata: { scope: lock.scope, lockedSeconds: lock.seconds },
  }));
}
