import { createParamDecorator, ExecutionContext } from '@nestjs/common';
import type { UserRole } from '../users/user.entity';

/** What the session check (SessionsService.validateSession) knows of an active session. */
export interface ActiveSession {
  userId: string;
  sessionId: string;
  role: UserRole;
  /** The session's idle deadline as of this check (activity moves it later). */
  expiresAt: Date;
  /** The session's absolute deadline: nothing moves it. */
  absoluteExpiresAt: Date;
}

/** Who is calling, set on the request by SessionGuard once the session is known active. */
export interface AuthContext extends ActiveSession {
  /**
   * When the user last authenticated, in seconds since the epoch: the access token's
   * `auth_time` (0 when it has none). Step-up checks compare it with REAUTH_MAX_AGE.
   */
  authTime: number;
}

export const AUTH_CONTEXT_KEY = 'auth';

export const CurrentAuth = createParamDecorator((_: unknown, ctx: ExecutionContext): AuthContext => {
  const auth = ctx.switchToHttp().getRequest<Record<string, unknown>>()[AUTH_CONTEXT_KEY];
  // Only reachable on a @Public() route by mistake: fail closed.
  if (!auth) throw new Error('CurrentAuth used on a route without an authenticated session');
  return auth as AuthContext;
});
