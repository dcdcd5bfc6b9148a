import { CanActivate, ExecutionContext, Injectable, Logger, UnauthorizedException } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { AUTH_CONTEXT_KEY, type AuthContext } from '../common/current-auth.decorator';
import { IS_PUBLIC_KEY } from '../common/public.decorator';
import { SessionsService } from '../sessions/sessions.service';
import { JwtAuthGuard } from './jwt-auth.guard';
import { type AccessTokenClaims, JwtStrategy } from './jwt.strategy';
import { bearerChallenge } from '../common/bearer-challenge';
import { isHttp, OtherTransportRefusedError } from '../common/other-transports';
import { MemoizedReflector } from '../common/memoized-reflector';
import type { FastifyReply, FastifyRequest } from 'fastify';

/**
 * The single global guard: every route needs a valid access token AND an active session,
 * unless marked @Public(). A signature alone is not enough, so logout and revocation take
 * effect at once, everywhere.
 */
@Injectable()
export class SessionGuard implements CanActivate {
  private readonly logger = new Logger(SessionGuard.name);
  private readonly reflector: Reflector;

  constructor(
    reflector: Reflector,
    private readonly jwtGuard: JwtAuthGuard,
    private readonly jwtStrategy: JwtStrategy,
    private readonly sessions: SessionsService,
  ) {
    this.reflector = new MemoizedReflector(reflector);
  }

  // Not async: Nest takes a guard's boolean as it is, and awaits only a promise.
  canActivate(context: ExecutionContext): boolean | Promise<boolean> {
    const isPublic = this.reflector.getAllAndOverride<boolean>(IS_PUBLIC_KEY, [context.getHandler(), context.getClass()]);
    if (isPublic) return true;
    // Sessionary's tokens are HTTP bearer tokens: a handler of another transport (a host's
    // microservice connected with inheritAppConfig, a GraphQL resolver) that is not @Public()
    // is refused, never let through, with a line that says why (until 0.27.0 its message was
    // read as an HTTP request).
    // Said here, whatever filter answers (a host's, with globalExceptionFilter false): its
    // client is told `Forbidden` only.
    if (!isHttp(context)) {
      const refusal = new OtherTransportRefusedError(context);
      this.logger.error(refusal.detail);
      throw refusal;
    }
    return this.authenticate(context);
  }

  private async authenticate(context: ExecutionContext): Promise<boolean> {
    const http = context.switchToHttp();
    const request = http.getRequest<FastifyRequest & Record<string, unknown>>();
    try {
      // A token the strategy has already verified skips passport's per-request machinery (a
      // closure, a derived strategy object and a promise each time); any other token, forged
      // ones included, goes through passport and the full verification.
      const remembered = this.jwtStrategy.rememberedClaims(request);
      if (remembered) request.user = remembered;
      else await this.jwtGuard.canActivate(context); // throws 401 on any token problem
      const claims = request.user as AccessTokenClaims;
      const session = await this.sessions.validateSession(claims.sessionId, claims.userId);
      // A new object, never the session check's answer changed: that describes the session (and
      // may be shared), auth_time is this token's.
      request[AUTH_CONTEXT_KEY] = { ...session, authTime: claims.authTime } satisfies AuthContext;
      return true;
    } catch (error) {
      if (error instanceof UnauthorizedException) http.getResponse<FastifyReply>().header('WWW-Authenticate', bearerChallenge(request));
      throw error;
    }
  }
}
