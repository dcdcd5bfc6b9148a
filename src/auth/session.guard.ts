import { CanActivate, ExecutionContext, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { AUTH_CONTEXT_KEY } from '../common/current-auth.decorator';
import { IS_PUBLIC_KEY } from '../common/public.decorator';
import { SessionsService } from '../sessions/sessions.service';
import { JwtAuthGuard } from './jwt-auth.guard';
import type { AccessTokenClaims } from './jwt.strategy';

/**
 * The single global guard: every route needs a valid access token AND an active session,
 * unless marked @Public(). A signature alone is not enough, so logout and revocation take
 * effect at once, everywhere.
 */
@Injectable()
export class SessionGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    private readonly jwtGuard: JwtAuthGuard,
    private readonly sessions: SessionsService,
  ) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const isPublic = this.reflector.getAllAndOverride<boolean>(IS_PUBLIC_KEY, [context.getHandler(), context.getClass()]);
    if (isPublic) return true;
    await this.jwtGuard.canActivate(context); // throws 401 on any token problem
    const request = context.switchToHttp().getRequest<Record<string, unknown>>();
    const claims = request.user as AccessTokenClaims;
    request[AUTH_CONTEXT_KEY] = await this.sessions.validateSession(claims.sessionId, claims.userId);
    return true;
  }
}
