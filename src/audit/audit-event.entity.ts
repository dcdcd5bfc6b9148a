import { Column, Entity, PrimaryGeneratedColumn } from 'typeorm';

export const AUDIT_EVENT_TYPES = [
  'REGISTER',
  'LOGIN',
  'LOGIN_FAILED',
  'LOGOUT',
  'TOKEN_REFRESH',
  'REFRESH_TOKEN_REUSE',
  'SESSION_REVOKED',
  'SESSION_EXPIRED',
  'PASSWORD_CHANGED',
  'PROFILE_UPDATED',
  'ACCOUNT_LOCKED',
  'ROLE_CHANGED',
  'REFRESH_FAILED',
  'ACCESS_DENIED',
  'KEY_ROTATED',
  'REAUTHENTICATED',
  'REQUESTS_REFUSED',
] as const;
export type AuditEventType = (typeof AUDIT_EVENT_TYPES)[number];

export type AuditMetadata = Record<string, string | number | boolean | null>;

/**
 * An append-only security event. `seq` orders events (keyset pagination, and the hash chain
 * that makes the log tamper-evident); neither user_id nor session_id has a foreign key:
 * events outlive the users and sessions they name, unchanged (the chain covers both).
 */
@Entity({ name: 'audit_events' })
export class AuditEventEntity {
  @PrimaryGeneratedColumn('uuid')
  id: string;

  @Column({ type: 'bigint', generated: 'identity', generatedIdentity: 'ALWAYS', insert: false, update: false })
  seq: string;

  @Column({ type: 'varchar', length: 32 })
  type: AuditEventType;

  @Column({ name: 'user_id', type: 'uuid', nullable: true })
  userId: string | null;

  @Column({ name: 'session_id', type: 'uuid', nullable: true })
  sessionId: string | null;

  @Column({ name: 'ip_address', type: 'varchar', length: 64, nullable: true })
  ipAddress: string | null;

  @Column({ name: 'user_agent', type: 'varchar', length: 512, nullable: true })
  userAgent: string | null;

  @Column({ type: 'jsonb', default: () => `'{}'::jsonb` })
  metadata: AuditMetadata;

  @Column({ name: 'created_at', type: 'timestamptz', default: () => 'now()' })
  createdAt: Date;
}
