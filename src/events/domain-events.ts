import type { AuditEventType, AuditMetadata } from '../audit/audit-event.entity';
import type { SessionEndReason } from '../sessions/session.entity';
import type { UserRole } from '../users/user.entity';

/**
 * What a host application can listen to (with `@OnEvent(name)` of @nestjs/event-emitter). Every
 * event is emitted after the transaction of the change it reports has committed, and never for
 * a change that rolled back. They are derived from the audit events written beside each change.
 * At least once: a database crash can lose a cleanup's commit (synchronous_commit off) after
 * its events went out, and the next tick emits that session's end again (README, Domain events).
 */
export const DOMAIN_EVENTS = {
  sessionCreated: 'session.created',
  sessionEnded: 'session.ended',
  userRegistered: 'user.registered',
  userPasswordChanged: 'user.password_changed',
  userRoleChanged: 'user.role_changed',
  loginFailed: 'login.failed',
  accountLocked: 'account.locked',
} as const;

export type DomainEventName = (typeof DOMAIN_EVENTS)[keyof typeof DOMAIN_EVENTS];

/** Fields every event has. */
export interface DomainEventBase {
  /** The audit event it comes from (GET /api/v1/admin/audit shows it). */
  auditEventId: string;
  /** When it happened, by the database's clock (ISO 8601, UTC, to the microsecond). */
  occurredAt: string;
  /** The client that caused it, when there was one (null for the cleanup job, the CLI, an admin's change of role). */
  ipAddress: string | null;
  userAgent: string | null;
}

export interface SessionCreatedEvent extends DomainEventBase {
  name: 'session.created';
  userId: string;
  sessionId: string;
}

export interface SessionEndedEvent extends DomainEventBase {
  name: 'session.ended';
  userId: string;
  sessionId: string;
  /** logout, revoked, revoked_by_admin, password_changed, session_limit, refresh_token_reuse, idle_timeout, absolute_timeout */
  reason: SessionEndReason;
}

export interface UserRegisteredEvent extends DomainEventBase {
  name: 'user.registered';
  userId: string;
}

export interface UserPasswordChangedEvent extends DomainEventBase {
  name: 'user.password_changed';
  userId: string;
  /** The session in which the password was changed (every other one of the user's has ended). */
  sessionId: string | null;
}

export interface UserRoleChangedEvent extends DomainEventBase {
  name: 'user.role_changed';
  userId: string;
  from: UserRole;
  to: UserRole;
}

export interface LoginFailedEvent extends DomainEventBase {
  name: 'login.failed';
  /** Null when no account matched (the client was told nothing more than for a wrong password). */
  userId: string | null;
  /** email, username, or current_password (a re-authentication inside a session). */
  method: string;
}

export interface AccountLockedEvent extends DomainEventBase {
  name: 'account.locked';
  /** Null for a lock of a client IP, or of an identifier that names no account. */
  userId: string | null;
  scope: 'identifier' | 'ip';
  lockedSeconds: number;
}

export type DomainEvent =
  | SessionCreatedEvent
  | SessionEndedEvent
  | UserRegisteredEvent
  | UserPasswordChangedEvent
  | UserRoleChangedEvent
  | LoginFailedEvent
  | AccountLockedEvent;

/** An audit event as it was appended (see AuditService.record). */
export interface RecordedAuditEvent {
  id: string;
  type: AuditEventType;
  userId: string | null;
  sessionId: string | null;
  ipAddress: string | null;
  userAgent: string | null;
  metadata: AuditMetadata;
  createdAt: string;
}

const SESSION_ENDS: ReadonlySet<AuditEventType> = new Set(['LOGOUT', 'SESSION_REVOKED', 'SESSION_EXPIRED', 'REFRESH_TOKEN_REUSE']);

/** The domain event an audit event reports, if it reports one a host can listen to. */
export function domainEventOf(e: RecordedAuditEvent): DomainEvent | undefined {
  const base: DomainEventBase = { auditEventId: e.id, occurredAt: e.createdAt, ipAddress: e.ipAddress, userAgent: e.userAgent };
  const text = (key: string) => (typeof e.metadata[key] === 'string' ? (e.metadata[key] as string) : undefined);
  if (e.type === 'LOGIN' && e.userId && e.sessionId) return { name: 'session.created', ...base, userId: e.userId, sessionId: e.sessionId };
  if (SESSION_ENDS.has(e.type) && e.userId && e.sessionId && text('reason')) {
    return { name: 'session.ended', ...base, userId: e.userId, sessionId: e.sessionId, reason: text('reason') as SessionEndReason };
  }
  if (e.type === 'REGISTER' && e.userId) return { name: 'user.registered', ...base, userId: e.userId };
  if (e.type === 'PASSWORD_CHANGED' && e.userId) return { name: 'user.password_changed', ...base, userId: e.userId, sessionId: e.sessionId };
  if (e.type === 'ROLE_CHANGED' && e.userId && text('from') && text('to')) {
    return { name: 'user.role_changed', ...base, userId: e.userId, from: text('from') as UserRole, to: text('to') as UserRole };
  }
  if (e.type === 'LOGIN_FAILED') return { name: 'login.failed', ...base, userId: e.userId, method: text('method') ?? 'unknown' };
  if (e.type === 'ACCOUNT_LOCKED' && (text('scope') === 'identifier' || text('scope') === 'ip')) {
    return {
      name: 'account.locked',
      ...base,
      userId: e.userId,
      scope: text('scope') as 'identifier' | 'ip',
      lockedSeconds: Number(e.metadata.lockedSeconds),
    };
  }
  return undefined;
}
