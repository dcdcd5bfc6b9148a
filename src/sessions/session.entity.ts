import { Column, Entity, JoinColumn, ManyToOne, PrimaryGeneratedColumn } from 'typeorm';
import { UserEntity } from '../users/user.entity';

export const SESSION_END_REASONS = [
  'logout',
  'revoked',
  'revoked_by_admin',
  'password_changed',
  'refresh_token_reuse',
  'idle_timeout',
  'absolute_timeout',
  'session_limit',
] as const;
export type SessionEndReason = (typeof SESSION_END_REASONS)[number];

/**
 * One login. Invariant (CHECK in the migration): idle_expires_at <= absolute_expires_at, so
 * "idle_expires_at has passed" alone tells that a session is due to end, and the end reason
 * follows from which deadline it is.
 */
@Entity({ name: 'sessions' })
export class SessionEntity {
  @PrimaryGeneratedColumn('uuid')
  id: string;

  @Column({ name: 'user_id', type: 'uuid' })
  userId: string;

  @ManyToOne(() => UserEntity, { onDelete: 'CASCADE' })
  @JoinColumn({ name: 'user_id' })
  user?: UserEntity;

  @Column({ name: 'created_at', type: 'timestamptz', default: () => 'now()' })
  createdAt: Date;

  /**
   * When the user last proved who they are in this session: its login, or a reauthentication.
   * Access tokens carry it as `auth_time` (RFC 9470), which is what step-up checks read.
   */
  @Column({ name: 'auth_time', type: 'timestamptz', default: () => 'now()' })
  authTime: Date;

  @Column({ name: 'last_seen_at', type: 'timestamptz', default: () => 'now()' })
  lastSeenAt: Date;

  @Column({ name: 'idle_expires_at', type: 'timestamptz' })
  idleExpiresAt: Date;

  @Column({ name: 'absolute_expires_at', type: 'timestamptz' })
  absoluteExpiresAt: Date;

  /** SHA-256 (hex) of the current refresh token; the token itself is never stored. */
  @Column({ name: 'refresh_token_hash', type: 'char', length: 64 })
  refreshTokenHash: string;

  @Column({ name: 'refresh_expires_at', type: 'timestamptz' })
  refreshExpiresAt: Date;

  @Column({ name: 'ended_at', type: 'timestamptz', nullable: true })
  endedAt: Date | null;

  @Column({ name: 'end_reason', type: 'varchar', length: 32, nullable: true })
  endReason: SessionEndReason | null;

  @Column({ name: 'ip_address', type: 'varchar', length: 64, nullable: true })
  ipAddress: string | null;

  @Column({ name: 'user_agent', type: 'varchar', length: 512, nullable: true })
  userAgent: string | null;
}
