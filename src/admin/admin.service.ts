import { Injectable } from '@nestjs/common';
import type { ClientContext } from '../common/client-context';
import type { AuthContext } from '../common/current-auth.decorator';
import type { SessionEntity } from '../sessions/session.entity';
import { SessionsService } from '../sessions/sessions.service';
import { UserSessionsService } from '../sessions/user-sessions.service';
import { UsersService } from '../users/users.service';

/** What an admin may do to other users' sessions; AdminController only maps HTTP to it. */
@Injectable()
export class AdminService {
  constructor(
    private readonly users: UsersService,
    private readonly sessions: SessionsService,
    private readonly userSessions: UserSessionsService,
  ) {}

  /** A user's active sessions; 404 for no such user (an empty list would hide a typo). */
  async listUserSessions(userId: string): Promise<SessionEntity[]> {
    await this.users.getById(userId);
    return this.userSessions.listActive(userId);
  }

  /** Ends every active session of a user, each with reason revoked_by_admin and the admin's id in its event. Answers how many. */
  /** After the admin's step-up (a recent authentication, or the admin's current password); 404 for no such user. */
  async revokeUserSessions(userId: string, admin: AuthContext, client: ClientContext, currentPassword?: string): Promise<number> {
    await this.users.requireStepUp(admin, currentPassword, client, 'admin_revocation');
    await this.users.getById(userId);
    const ended = await this.sessions.endSessions(
      { userId },
      { reason: 'revoked_by_admin', event: 'SESSION_REVOKED', client, actorSessionId: admin.sessionId, metadata: { adminId: admin.userId } },
    );
    return ended.length;
  }
}
