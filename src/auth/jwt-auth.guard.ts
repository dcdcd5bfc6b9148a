import { ExecutionContext, Injectable, UnauthorizedException } from '@nestjs/common';
import passport from 'passport';
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
  constructor(private readonly strategy: JwtStrategy) {}

  /** Sets `request.user` to the token's claims, or throws a 401. */
  canActivate(context: ExecutionContext): Promise<true> {
    const http = context.switchToHttp();
    const request = http.getRequest<{ user?: AccessTokenClaims }>();
    return new Promise((resolve, reject) => {
      // One answer for every token problem: which check failed is no business of the caller.
      const refuse = () => reject(new UnauthorizedException('Invalid or missing access token'));
      const authenticate = passport.authenticate(
        Object.create(this.strategy) as JwtStrategy,
        { session: false },
        (err: unknown, user: AccessTokenClaims | false) => {
          if (err || !user) return refuse();
          request.user = user;
          resolve(true);
        },
      ) as (req: unknown, res: unknown, next: (err?: unknown) => void) => void;
      // passport calls next only for a strategy's pass(), which this one never calls.
      authenticate(request, http.getResponse(), refuse);
    });
  }
}
