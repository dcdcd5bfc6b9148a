import { ExecutionContext, Injectable, Optional, UnauthorizedException } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import passport from 'passport';
import { RefusedRequestsTally } from '../audit/refused-requests-tally';
import { clientContextOf } from '../common/client-context';
import { type AccessTokenClaims, JwtStrategy } from './jwt.strategy';

/**
 * Runs this module's passport-jwt strategy; used by SessionGuard, never on its own.
 *
 * It hands passport the strategy itself, not a name (what `AuthGuard('jwt')` does): passport
 * keeps one strategy per name for the whole process, so by name the last one built answers for
 * all. Until 0.16.0 Sessionary's was `'jwt'`, the name a host's own passport-jwt strategy has by
 * default, and the host's routes or Sessionary's then verified tokens with the other's keys and
 * rules; two Sessionary apps in one process did the same to each other. Passport derives a
 * per-request object from the strategy given, as it does from a named one.
 */
@Injectable()
export class JwtAuthGuard {
  constructor(
    private readonly strategy: JwtStrategy,
    /** Counts presented tokens refused for anything but their expiry into the audit log's summaries (ASVS 16.3.1). */
    @Optional() private readonly refusals?: RefusedRequestsTally,
  ) {}

  /** Sets `request.user` to the token's claims, or throws a 401. */
  canActivate(context: ExecutionContext): Promise<true> {
    const http = context.switchToHttp();
    const request = http.getRequest<FastifyRequest & { user?: AccessTokenClaims }>();
    return new Promise((resolve, reject) => {
      // One answer for every token problem: which check failed is no business of the caller.
      const refuse = () => reject(new UnauthorizedException('Invalid or missing access token'));
      const authenticate = passport.authenticate(
        Object.create(this.strategy) as JwtStrategy,
        { session: false },
        (err: unknown, user: AccessTokenClaims | false, info: unknown) => {
          if (err || !user) {
            // A token sent and refused, but not merely expired (every client sends one of those
            // now and then): forged, malformed, another issuer's or a retired key's. No header: no attempt.
            if (this.refusals && request.headers.authorization !== undefined && !isExpiry(info)) {
              this.refusals.count(clientContextOf(request).ipAddress, 'bearerRefused');
            }
            return refuse();
          }
          request.user = user;
          resolve(true);
        },
      ) as (req: unknown, res: unknown, next: (err?: unknown) => void) => void;
      // passport calls next only for a strategy's pass(), which this one never calls.
      authenticate(request, http.getResponse(), refuse);
    });
  }
}

/** jsonwebtoken's error for a token past its `exp` (passport-jwt hands it over as the failure's info). */
function isExpiry(info: unknown): boolean {
  return (info as { name?: unknown } | null)?.name === 'TokenExpiredError';
}
