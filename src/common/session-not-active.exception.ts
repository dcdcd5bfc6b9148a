import { UnauthorizedException } from '@nestjs/common';
import { BEARER_CHALLENGES } from './bearer-challenge';

/** The one answer for a token whose session is not active (ended, expired, unknown): no cause told apart. */
export const UNAUTHORIZED_SESSION = 'Session is not active';

/**
 * A 401 for a bearer token whose session is not active, wherever it is found: SessionGuard, or a
 * service that finds the session ended since the guard let the request in (a logout racing a
 * revocation). The exception filter sends `challenge` as WWW-Authenticate, RFC 6750's
 * `invalid_token`, as SessionGuard does, rather than the bare scheme of other 401s.
 */
export class SessionNotActiveException extends UnauthorizedException {
  readonly challenge = BEARER_CHALLENGES[1];

  constructor() {
    super(UNAUTHORIZED_SESSION);
  }
}
