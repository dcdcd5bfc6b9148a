import { Injectable, UnauthorizedException } from '@nestjs/common';
import { AuthGuard } from '@nestjs/passport';
import type { AccessTokenClaims } from './jwt.strategy';

/** Runs the passport-jwt strategy; used by SessionGuard, never on its own. */
@Injectable()
export class JwtAuthGuard extends AuthGuard('jwt') {
  // One answer for every token problem: which check failed is no business of the caller.
  override handleRequest<T = AccessTokenClaims>(err: unknown, user: T | false): T {
    if (err || !user) throw new UnauthorizedException('Invalid or missing access token');
    return user;
  }
}
