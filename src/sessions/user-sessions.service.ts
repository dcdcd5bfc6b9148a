import { Injectable, NotFoundException } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource } from 'typeorm';
import type { ClientContext } from '../common/client-context';
import type { AuthContext } from '../common/current-auth.decorator';
import { BoundedAuditService, type RefusedRoute } from '../audit/bounded-audit.service';
import { sql } from '../database/sql';
import { SESSION_COLUMNS, type SessionRow, toEntity } from './session-row';
import { SessionEntity } from './session.entity';
import { SessionsService } from './sessions.service';
import { SessionNotActiveException } from '../common/session-not-active.exception';
import { UsersService } from '../users/users.service';

/**
 * What a user (and an admin, for a user) does with their list of sessions: see the active ones,
 * end one, end all the others. Every end goes through SessionsService, which records it.
 */
@Injectable()
export class UserSessionsService {
  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly sessions: SessionsService,
    private readonly users: UsersService,
    private readonly boundedAudit: BoundedAuditService,
  ) {}

  /** The user's sessions that are usable now, newest first. */
  async listActive(userId: string): Promise<SessionEntity[]> {
    const { rows } = await sql<SessionRow>(
      this.dataSource.manager,
      `SELECT ${SESSION_COLUMNS} FROM sessions
        WHERE user_id = $1 AND ended_at IS NULL AND idle_expires_at > now()
        ORDER BY created_at DESC, id`,
      [userId],
    );
    return rows.map(toEntity);
  }

  /**
   * A user ends one of their sessions. Someone else's, an unknown and an ended one get the
   * same 404, so session ids cannot be probed. Ending the current session is a logout.
   *
   * Ending another one needs a recent authentication, like ending all others: one by one, a
   * stale (stolen) token could otherwise do what DELETE /sessions refuses it (ASVS 7.5.2). The
   * check comes first and depends only on the id being another's, so it reveals nothing.
   *
   * An id that is not one of the user's own sessions (someone else's, or none at all) is a
   * failed authorization attempt (ASVS 16.3.2): audited as ACCESS_DENIED (see recordNotOwn).
   */
  async revokeOwn(auth: AuthContext, id: string, client: ClientContext, route: RefusedRoute, currentPassword?: string): Promise<void> {
    // A UUID in any case (the route's pipe accepts both); the session's own is in lower case.
    const sessionId = id.toLowerCase();
    const isCurrent = sessionId === auth.sessionId;
    if (!isCurrent) await this.users.requireStepUp(auth, currentPassword, client, 'end_session');
    const ended = await this.sessions.end(
      { sessionId, ownerId: auth.userId },
      isCurrent
        ? { reason: 'logout', event: 'LOGOUT', client }
        : { reason: 'revoked', event: 'SESSION_REVOKED', client, actorSessionId: auth.sessionId },
    );
    if (ended) return;
    // The caller's own session, ended since the guard let the request in (a revocation, an
    // expiry): the 401 every request of an ended session gets, not the 404 of another's id.
    if (isCurrent) throw new SessionNotActiveException();
    await this.recordNotOwn(auth, sessionId, client, route);
    throw new NotFoundException('Session not found');
  }

  /**
   * ACCESS_DENIED for an id that is not one of the user's own sessions, whether it is someone
   * else's or no session's: recorded alike (the same metadata), since the user can read their
   * own events, and an event only for someone else's would tell them which ids exist, which the
   * identical 404 does not. One of their own, ended already, is no attempt: nothing. At most one
   * a session and route per AUDIT_REFUSAL_WINDOW (BoundedAuditService), so probing cannot flood
   * the log. An own session deleted by the cleanup since (days after it ended) counts as not
   * theirs. The owner check is a query like the end before it: should the database fail there,
   * the answer is what its failure gives any request; a failure to record is only logged.
   */
  private async recordNotOwn(auth: AuthContext, sessionId: string, client: ClientContext, route: RefusedRoute): Promise<void> {
    const { rows } = await sql(this.dataSource.manager, `SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2`, [sessionId, auth.userId]);
    if (rows.length) return;
    await this.boundedAudit.recordAccessDenied({
      userId: auth.userId,
      sessionId: auth.sessionId,
      client,
      route,
      details: { targetSessionId: sessionId },
    });
  }

  /** A user ends all their other sessions ("log out everywhere else"). */
  /** Every other session of the user's ends; a step-up first (a recent authentication, or the current password). */
  async revokeOthers(auth: AuthContext, client: ClientContext, currentPassword?: string): Promise<number> {
    await this.users.requireStepUp(auth, currentPassword, client, 'end_other_sessions');
    const ended = await this.sessions.endSessions(
      { userId: auth.userId, exceptSessionId: auth.sessionId },
      { reason: 'revoked', event: 'SESSION_REVOKED', client, actorSessionId: auth.sessionId },
    );
    return ended.length;
  }
}
