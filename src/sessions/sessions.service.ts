import { Injectable, Logger, NotFoundException, UnauthorizedException } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { DataSource, EntityManager } from 'typeorm';
import { AuditEventType, AuditMetadata } from '../audit/audit-event.entity';
import { AuditService } from '../audit/audit.service';
import type { ClientContext } from '../common/client-context';
import type { AuthContext } from '../common/current-auth.decorator';
import type { AppConfig } from '../config/config';
import { sql } from '../database/sql';
import type { UserRole } from '../users/user.entity';
import { generateRefreshToken, hashRefreshToken, looksLikeRefreshToken } from './refresh-token';
import { judgeSession, touchIntervalMs } from './session-rules';
import { SessionEndReason, SessionEntity } from './session.entity';

/** A session with the refresh token that was just issued for it (shown to the client once). */
export interface IssuedSession {
  session: SessionEntity;
  refreshToken: string;
}

export interface EndSessionOptions {
  reason: SessionEndReason;
  event: AuditEventType;
  client?: ClientContext | null;
  /** The session of whoever asked for the end (recorded on each event when not the ended one). */
  actorSessionId?: string;
  metadata?: AuditMetadata;
}

/** Which active sessions to end: one (optionally only if it is this user's), or all of a user's but one. */
export type SessionTarget = { sessionId: string; ownerId?: string } | { userId: string; exceptSessionId?: string };

interface SessionRow {
  id: string;
  user_id: string;
  created_at: Date;
  last_seen_at: Date;
  idle_expires_at: Date;
  absolute_expires_at: Date;
  refresh_expires_at: Date;
  ended_at: Date | null;
  end_reason: SessionEndReason | null;
  ip_address: string | null;
  user_agent: string | null;
}

const RETURNING = `id, user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at,
  refresh_expires_at, ended_at, end_reason, ip_address, user_agent`;

export const UNAUTHORIZED_SESSION = 'Session is not active';
const INVALID_REFRESH = 'Invalid refresh token';

/**
 * Owns the session lifecycle. Deadlines are computed and compared with the database's
 * clock (now()), so instances with skewed clocks still agree on when a session ends.
 */
@Injectable()
export class SessionsService {
  private readonly logger = new Logger(SessionsService.name);
  private readonly idleTtl: number;
  private readonly absoluteTtl: number;
  private readonly refreshTtl: number;
  private readonly touchIntervalMs: number;
  private readonly maxPerUser: number;

  constructor(
    @InjectDataSource() private readonly dataSource: DataSource,
    private readonly audit: AuditService,
    config: ConfigService<AppConfig, true>,
  ) {
    this.idleTtl = config.get('SESSION_IDLE_TTL', { infer: true });
    this.absoluteTtl = config.get('SESSION_ABSOLUTE_TTL', { infer: true });
    this.refreshTtl = config.get('REFRESH_TOKEN_TTL', { infer: true });
    this.touchIntervalMs = touchIntervalMs(this.idleTtl);
    this.maxPerUser = config.get('SESSION_MAX_PER_USER', { infer: true });
  }

  /**
   * Opens a session inside the caller's transaction (the login and its audit event). Beyond
   * SESSION_MAX_PER_USER, the least recently used sessions end (reason session_limit).
   */
  async open(em: EntityManager, userId: string, client: ClientContext): Promise<IssuedSession> {
    if (this.maxPerUser > 0) await this.makeRoomForOneMore(em, userId, client);
    const refreshToken = generateRefreshToken();
    const { rows } = await sql<SessionRow>(
      em,
      `INSERT INTO sessions (user_id, idle_expires_at, absolute_expires_at, refresh_token_hash, refresh_expires_at, ip_address, user_agent)
       VALUES ($1, now() + make_interval(secs => $2), now() + make_interval(secs => $3), $4,
               now() + make_interval(secs => LEAST($5, $3)), $6, $7)
       RETURNING ${RETURNING}`,
      [userId, this.idleTtl, this.absoluteTtl, hashRefreshToken(refreshToken), this.refreshTtl, client.ipAddress, client.userAgent],
    );
    return { session: toEntity(rows[0]), refreshToken };
  }

  /**
   * THE session check: every authenticated request goes through here and nowhere else, so a
   * per-instance cache with cross-instance invalidation can later live behind this method.
   * Answers who is calling when the session is active; otherwise 401 (and an expired
   * session is ended with its reason and one audit event).
   */
  async validateSession(sessionId: string, userId: string): Promise<AuthContext> {
    const { rows } = await sql<SessionRow & { role: UserRole; now: Date }>(
      this.dataSource.manager,
      `SELECT s.user_id, s.ended_at, s.idle_expires_at, s.absolute_expires_at, s.last_seen_at, u.role, now() AS now
         FROM sessions s JOIN users u ON u.id = s.user_id
        WHERE s.id = $1`,
      [sessionId],
    );
    const row = rows[0];
    if (!row || row.user_id !== userId) throw new UnauthorizedException(UNAUTHORIZED_SESSION);
    const verdict = judgeSession(
      {
        endedAt: row.ended_at,
        idleExpiresAt: row.idle_expires_at,
        absoluteExpiresAt: row.absolute_expires_at,
        lastSeenAt: row.last_seen_at,
        now: row.now,
      },
      this.touchIntervalMs,
    );
    if (verdict.status === 'expired') {
      await this.endIfExpired(sessionId);
      throw new UnauthorizedException(UNAUTHORIZED_SESSION);
    }
    if (verdict.status === 'ended') throw new UnauthorizedException(UNAUTHORIZED_SESSION);
    if (verdict.touch) await this.recordActivity(sessionId);
    return { userId, sessionId, role: row.role, expiresAt: row.idle_expires_at, absoluteExpiresAt: row.absolute_expires_at };
  }

  /**
   * Exchanges a refresh token for a new one (rotation) and extends the idle deadline, never
   * the absolute one. The conditional UPDATE is the race arbiter: of two concurrent
   * refreshes with one token, exactly one matches the row. Presenting a token that was
   * already exchanged ends the whole session (OAuth 2.0 Security BCP, section 4.14.2).
   */
  async refresh(refreshToken: string, client: ClientContext): Promise<IssuedSession> {
    if (!looksLikeRefreshToken(refreshToken)) throw new UnauthorizedException(INVALID_REFRESH);
    const presentedHash = hashRefreshToken(refreshToken);
    const nextToken = generateRefreshToken();

    const rotated = await this.dataSource.transaction(async (em) => {
      const { rows } = await sql<SessionRow>(
        em,
        `UPDATE sessions
            SET refresh_token_hash = $2,
                refresh_expires_at = LEAST(now() + make_interval(secs => $3), absolute_expires_at),
                idle_expires_at = LEAST(now() + make_interval(secs => $4), absolute_expires_at),
                last_seen_at = now()
          WHERE refresh_token_hash = $1 AND ended_at IS NULL
            AND idle_expires_at > now() AND absolute_expires_at > now() AND refresh_expires_at > now()
          RETURNING ${RETURNING}`,
        [presentedHash, hashRefreshToken(nextToken), this.refreshTtl, this.idleTtl],
      );
      if (!rows.length) return undefined;
      const session = toEntity(rows[0]);
      await sql(em, `INSERT INTO rotated_refresh_tokens (token_hash, session_id) VALUES ($1, $2)`, [presentedHash, session.id]);
      await this.audit.record(em, { type: 'TOKEN_REFRESH', userId: session.userId, sessionId: session.id, client });
      return session;
    });
    if (rotated) return { session: rotated, refreshToken: nextToken };

    await this.explainFailedRefresh(presentedHash, client);
    throw new UnauthorizedException(INVALID_REFRESH);
  }

  /** Ends one active session; false when there was nothing to end (unknown, not the owner's, ended or expired). */
  async end(target: { sessionId: string; ownerId?: string }, options: EndSessionOptions): Promise<boolean> {
    return (await this.endSessions(target, options)).length === 1;
  }

  /**
   * Ends active sessions with their reason and one audit event each, atomically; in the
   * caller's transaction when given one. The conditional UPDATE makes concurrent ends of one
   * session record exactly one event. A session already past its deadline is left for expiry
   * to record, so every end keeps its true reason. Returns the ended sessions' ids.
   */
  async endSessions(target: SessionTarget, options: EndSessionOptions, em?: EntityManager): Promise<string[]> {
    if (!em) return this.dataSource.transaction((tx) => this.endSessions(target, options, tx));
    const one = 'sessionId' in target;
    const { rows } = await sql<{ id: string; user_id: string }>(
      em,
      `UPDATE sessions SET ended_at = now(), end_reason = $1
        WHERE ended_at IS NULL AND idle_expires_at > now()
          AND ${one ? 'id = $2 AND ($3::uuid IS NULL OR user_id = $3::uuid)' : 'user_id = $2 AND ($3::uuid IS NULL OR id <> $3::uuid)'}
        RETURNING id, user_id`,
      one
        ? [options.reason, target.sessionId, target.ownerId ?? null]
        : [options.reason, target.userId, target.exceptSessionId ?? null],
    );
    await this.audit.record(
      em,
      ...rows.map((r) => ({
        type: options.event,
        userId: r.user_id,
        sessionId: r.id,
        client: options.client,
        metadata: {
          reason: options.reason,
          ...(options.actorSessionId && options.actorSessionId !== r.id ? { bySessionId: options.actorSessionId } : {}),
          ...options.metadata,
        },
      })),
    );
    return rows.map((r) => r.id);
  }

  /**
   * A user ends one of their sessions. Someone else's, an unknown and an ended one get the
   * same 404, so session ids cannot be probed. Ending the current session is a logout.
   */
  async revokeOwn(auth: AuthContext, sessionId: string, client: ClientContext): Promise<void> {
    const isCurrent = sessionId === auth.sessionId;
    const ended = await this.end(
      { sessionId, ownerId: auth.userId },
      isCurrent
        ? { reason: 'logout', event: 'LOGOUT', client }
        : { reason: 'revoked', event: 'SESSION_REVOKED', client, actorSessionId: auth.sessionId },
    );
    if (!ended) throw new NotFoundException('Session not found');
  }

  /** A user ends all their other sessions ("log out everywhere else"). */
  async revokeOthers(auth: AuthContext, client: ClientContext): Promise<number> {
    const ended = await this.endSessions(
      { userId: auth.userId, exceptSessionId: auth.sessionId },
      { reason: 'revoked', event: 'SESSION_REVOKED', client, actorSessionId: auth.sessionId },
    );
    return ended.length;
  }

  /**
   * Ends every active session of every user (an operator's emergency stop, e.g. after a
   * leaked JWT secret), in batches so no transaction grows unbounded. Returns how many ended.
   */
  async endAllSessions(options: EndSessionOptions, batchSize = 1000): Promise<number> {
    // Sessions opened after the command started do not keep it going (logins go on meanwhile).
    const { rows: started } = await sql<{ now: Date }>(this.dataSource.manager, 'SELECT now() AS now');
    let total = 0;
    for (;;) {
      const ended = await this.dataSource.transaction(async (em) => {
        const { rows } = await sql<{ user_id: string }>(
          em,
          `SELECT DISTINCT user_id FROM (
             SELECT user_id FROM sessions
              WHERE ended_at IS NULL AND idle_expires_at > now() AND created_at <= $2
              LIMIT $1) AS s`,
          [batchSize, started[0].now],
        );
        let count = 0;
        for (const { user_id } of rows) count += (await this.endSessions({ userId: user_id }, options, em)).length;
        return count;
      });
      total += ended;
      if (ended === 0) return total;
    }
  }

  /** The user's sessions that are usable now, newest first. */
  async listActive(userId: string): Promise<SessionEntity[]> {
    const { rows } = await sql<SessionRow>(
      this.dataSource.manager,
      `SELECT ${RETURNING} FROM sessions
        WHERE user_id = $1 AND ended_at IS NULL AND idle_expires_at > now()
        ORDER BY created_at DESC, id`,
      [userId],
    );
    return rows.map(toEntity);
  }

  /**
   * Ends up to `limit` sessions past their deadline, each with its reason and one
   * SESSION_EXPIRED event. SKIP LOCKED lets concurrent callers take disjoint batches.
   * The session ended at its deadline, so that is what ended_at records.
   */
  async endExpiredSessions(limit: number): Promise<number> {
    return this.dataSource.transaction(async (em) => {
      const { rows } = await sql<{ id: string; user_id: string; end_reason: SessionEndReason }>(
        em,
        `WITH due AS (
           SELECT id FROM sessions
            WHERE ended_at IS NULL AND idle_expires_at <= now()
            ORDER BY idle_expires_at
            LIMIT $1
              FOR UPDATE SKIP LOCKED)
         UPDATE sessions s
            SET ended_at = s.idle_expires_at,
                end_reason = CASE WHEN s.idle_expires_at < s.absolute_expires_at THEN 'idle_timeout' ELSE 'absolute_timeout' END
           FROM due WHERE s.id = due.id
         RETURNING s.id, s.user_id, s.end_reason`,
        [limit],
      );
      await this.audit.record(
        em,
        ...rows.map((r) => ({
          type: 'SESSION_EXPIRED' as const,
          userId: r.user_id,
          sessionId: r.id,
          metadata: { reason: r.end_reason, detectedBy: 'cleanup' },
        })),
      );
      return rows.length;
    });
  }

  /** Deletes up to `limit` sessions that ended more than `retentionSeconds` ago. */
  async deleteEndedSessions(retentionSeconds: number, limit: number): Promise<number> {
    const { count } = await sql(
      this.dataSource.manager,
      `DELETE FROM sessions WHERE id IN (
         SELECT id FROM sessions
          WHERE ended_at IS NOT NULL AND ended_at < now() - make_interval(secs => $1)
          ORDER BY ended_at
          LIMIT $2
            FOR UPDATE SKIP LOCKED)`,
      [retentionSeconds, limit],
    );
    return count;
  }

  private async makeRoomForOneMore(em: EntityManager, userId: string, client: ClientContext): Promise<void> {
    // Locking the user row serialises this user's logins: two concurrent ones cannot both
    // count the same free place.
    await sql(em, 'SELECT 1 FROM users WHERE id = $1 FOR UPDATE', [userId]);
    const { rows } = await sql<{ id: string }>(
      em,
      `SELECT id FROM sessions
        WHERE user_id = $1 AND ended_at IS NULL AND idle_expires_at > now()
        ORDER BY last_seen_at DESC, created_at DESC
       OFFSET $2`,
      [userId, this.maxPerUser - 1],
    );
    for (const { id } of rows) {
      await this.endSessions({ sessionId: id }, { reason: 'session_limit', event: 'SESSION_REVOKED', client }, em);
    }
  }

  /** Ends one session that is past its deadline; no-op when it is not (or already ended). */
  private async endIfExpired(sessionId: string): Promise<void> {
    await this.dataSource.transaction(async (em) => {
      const { rows } = await sql<{ user_id: string; end_reason: SessionEndReason }>(
        em,
        `UPDATE sessions
            SET ended_at = idle_expires_at,
                end_reason = CASE WHEN idle_expires_at < absolute_expires_at THEN 'idle_timeout' ELSE 'absolute_timeout' END
          WHERE id = $1 AND ended_at IS NULL AND idle_expires_at <= now()
          RETURNING user_id, end_reason`,
        [sessionId],
      );
      if (!rows.length) return;
      await this.audit.record(em, {
        type: 'SESSION_EXPIRED',
        userId: rows[0].user_id,
        sessionId,
        metadata: { reason: rows[0].end_reason, detectedBy: 'request' },
      });
    });
  }

  /** Activity extends the idle deadline, capped at the absolute one; never revives an ended session. */
  private async recordActivity(sessionId: string): Promise<void> {
    await sql(
      this.dataSource.manager,
      `UPDATE sessions
          SET last_seen_at = now(), idle_expires_at = LEAST(now() + make_interval(secs => $2), absolute_expires_at)
        WHERE id = $1 AND ended_at IS NULL AND idle_expires_at > now()`,
      [sessionId, this.idleTtl],
    );
  }

  /** A refresh failed: if the token was already rotated, that is reuse; if expired, record the end. */
  private async explainFailedRefresh(presentedHash: string, client: ClientContext): Promise<void> {
    const { rows: reused } = await sql<{ session_id: string }>(
      this.dataSource.manager,
      `SELECT session_id FROM rotated_refresh_tokens WHERE token_hash = $1`,
      [presentedHash],
    );
    if (reused.length) {
      const ended = await this.end({ sessionId: reused[0].session_id }, { reason: 'refresh_token_reuse', event: 'REFRESH_TOKEN_REUSE', client });
      if (ended) this.logger.warn(`Refresh token reuse detected; session ${reused[0].session_id} ended`);
      return;
    }
    const { rows: current } = await sql<{ id: string }>(
      this.dataSource.manager,
      `SELECT id FROM sessions WHERE refresh_token_hash = $1 AND ended_at IS NULL AND idle_expires_at <= now()`,
      [presentedHash],
    );
    if (current.length) await this.endIfExpired(current[0].id);
  }
}

function toEntity(row: SessionRow): SessionEntity {
  return Object.assign(new SessionEntity(), {
    id: row.id,
    userId: row.user_id,
    createdAt: row.created_at,
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
