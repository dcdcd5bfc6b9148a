import { ForbiddenException, Injectable } from '@nestjs/common';
import type { ClientContext } from '../common/client-context';
import type { AuthContext } from '../common/current-auth.decorator';
import type { SessionEntity } from '../sessions/session.entity';
import { ActorRoleChangedException, SessionsService } from '../sessions/sessions.service';
import { BoundedAuditService, type RefusedRoute } from '../audit/bounded-audit.service';
import { UserSessionsService } from '../sessions/user-sessions.service';
import { UsersService } from '../users/users.service';

/** What an admin may do to other users' sessions; AdminController only maps HTTP to it. */
@Injectable()
export class AdminService {
  constructor(
    private readonly users: UsersService,
    private readonly sessions: SessionsService,
    private readonly userSessions: UserSessionsService,
    private readonly boundedAudit: BoundedAuditService,
  ) {}

  /** A user's active sessions; 404 for no such user (an empty list would hide a typo). */
  async listUserSessions(userId: string): Promise<SessionEntity[]> {
    await this.users.getById(userId);
    return this.userSessions.listActive(userId);
  }

  /**
   * Whether the session that started a long answer (an audit export) may still have it: active
   * and an admin's. Asked again as the answer goes on, so that a logout, a revocation or a
   * demotion stops an export under way as it stops the session's next request (until 0.25.0
   * an export went on to its end). From the session check's cache: no query while it is exact.
   */
  async assertStillAdmin(auth: Pick<AuthContext, 'sessionId' | 'userId'>): Promise<void> {
    const session = await this.sessions.validateSession(auth.sessionId, auth.userId);
    if (session.role !== 'admin') throw new ForbiddenException('No longer an admin');
  }

  /**
   * Ends every active session of a user, each with reason revoked_by_admin and the admin's id in
   * its event, and answers how many; after the admin's step-up (a recent authentication, or the
   * admin's current password); 404 for no such user. The admin must still be one as the
   * sessions end (read under the admin's row lock): demoted meanwhile (during the step-up's
   * bcrypt check, say), the answer is the 403 RolesGuard gives, recorded as it records its
   * refusals (ACCESS_DENIED), and nothing ends.
   */
  async revokeUserSessions(
    userId: string,
    admin: AuthContext,
    client: ClientContext,
    route: RefusedRoute,
    currentPassword?: string,
  ): Promise<number> {
    await this.users.requireStepUp(admin, currentPassword, client, 'admin_revocation');
    await this.users.getById(userId);
    try {
      const ended = await this.sessions.endSessions(
        { userId },
        {
          reason: 'revoked_by_admin',
          event: 'SESSION_REVOKED',
          client,
          actorSessionId: admin.sessionId,
          actorRole: 'admin',
          metadata: { adminId: admin.userId },
        },
      );
      return ended.length;
    } catch (error) {
      if (error instanceof ActorRoleChangedException) {
        await this.boundedAudit.recordAccessDenied({
          userId: admin.userId,
          sessionId: admin.sessionId,
          client,
          route,
          details: { requiredRole: 'admin', role: error.role },
        });
      }
      throw error;
    }
  }
}
