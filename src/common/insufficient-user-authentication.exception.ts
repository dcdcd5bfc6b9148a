import { UnauthorizedException } from '@nestjs/common';

/** RFC 9470's own wording; also the `error_description` of the challenge (plain ASCII, no quotes). */
export const STEP_UP_DESCRIPTION = 'More recent authentication is required';

/**
 * A 401 for a valid session whose last authentication is too old for the action (RFC 9470,
 * section 3). The exception filter sends `challenge` as WWW-Authenticate, so whichever layer
 * throws it (a guard, a service) answers alike.
 */
export class InsufficientUserAuthenticationException extends UnauthorizedException {
  readonly challenge: string;

  constructor(maxAgeSeconds: number, message: string = STEP_UP_DESCRIPTION) {
    super({ statusCode: 401, error: 'Unauthorized', message });
    this.challenge = `Bearer error="insufficient_user_authentication", error_description="${STEP_UP_DESCRIPTION}", max_age=${maxAgeSeconds}`;
  }
}
