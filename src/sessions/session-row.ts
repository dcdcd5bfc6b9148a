import { SessionEndReason, SessionEntity } from './session.entity';

/** A `sessions` row as selected with SESSION_COLUMNS. */
export interface SessionRow {
  id: string;
  user_id: string;
  created_at: Date;
  auth_time: Date;
  last_seen_at: Date;
  idle_expires_at: Date;
  absolute_expires_at: Date;
  refresh_expires_at: Date;
  ended_at: Date | null;
  end_reason: SessionEndReason | null;
  ip_address: string | null;
  user_agent: string | null;
}

/** The columns of a SessionRow, for SELECT and RETURNING. */
export const SESSION_COLUMNS = `id, user_id, created_at, auth_time, last_seen_at, idle_expires_at, absolute_expires_at,
  refresh_expires_at, ended_at, end_reason, ip_address, user_agent`;

/** The entity the API shows, from a row. */
export function toEntity(row: SessionRow): SessionEntity {
  return Object.assign(new SessionEntity(), {
    id: row.id,
    userId: row.user_id,
    createdAt: row.created_at,
    authTime: row.auth_time,
    lastSeenAt: row.last_seen_at,
    idleExpiresAt: row.idle_expires_at,
    absoluteExpiresAt: row.absolute_expires_at,
    refreshExpiresAt: row.refresh_expires_at,
    endedAt: row.ended_at,
    endReason: row.end_reason,
    ipAddress: row.ip_address,
    userAgent: row.user_agent,
  });
}
