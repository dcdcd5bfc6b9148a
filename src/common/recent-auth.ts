import { applyDecorators, CanActivate, ExecutionContext, Injectable, Module, UseGuards } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { ApiUnauthorizedResponse } from '@nestjs/swagger';
import type { AppConfig } from '../config/config';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { AUTH_CONTEXT_KEY, type AuthContext } from './current-auth.decorator';
import { ErrorResponseDto } from './error-response.dto';
import { InsufficientUserAuthenticationException } from './insufficient-user-authentication.exception';

/**
 * Step-up (RFC 9470; ASVS 7.5.2): sensitive actions need an authentication younger than
 * REAUTH_MAX_AGE. The age comes from the access token's `auth_time`, which we signed; a
 * reauthentication issues a new token, so no cached session state has to change.
 */
@Injectable()
export class RecentAuthPolicy {
  readonly maxAgeSeconds: number;

  constructor(config: ConfigService<AppConfig, true>) {
    this.maxAgeSeconds = config.get('REAUTH_MAX_AGE', { infer: true });
  }

  /**
   * auth_time was set by the database's clock and is compared with this instance's: a skew of
   * a few seconds moves the window by as much, which is immaterial at minutes.
   */
  isRecent(auth: Pick<AuthContext, 'authTime'>, nowMs = Date.now()): boolean {
    // 0 (a token without auth_time) is unknown, not 1970: never recent, whatever the max age.
    return auth.authTime > 0 && nowMs / 1000 - auth.authTime < this.maxAgeSeconds;
  }

  /** Throws the RFC 9470 401 unless the caller authenticated recently enough. */
  requireRecent(auth: Pick<AuthContext, 'authTime'>, message?: string): void {
    if (!this.isRecent(auth)) throw new InsufficientUserAuthenticationException(this.maxAgeSeconds, message);
  }
}

/** Applied by @RequiresRecentAuth(); runs after SessionGuard (and a controller's RolesGuard). */
@Injectable()
export class RecentAuthGuard implements CanActivate {
  constructor(private readonly policy: RecentAuthPolicy) {}

  canActivate(context: ExecutionContext): boolean {
    const auth = context.switchToHttp().getRequest<Record<string, unknown>>()[AUTH_CONTEXT_KEY] as AuthContext | undefined;
    // Only reachable on a @Public() route by mistake: fail closed, as CurrentAuth does.
    if (!auth) throw new Error('RequiresRecentAuth used on a route without an authenticated session');
    this.policy.requireRecent(auth);
    return true;
  }
}

/**
 * The 401 of a route with a step-up rule, for Swagger: it replaces the controller's generic 401,
 * so it names the session failures too. `alternative` says what else satisfies the rule.
 */
export const ApiStepUpUnauthorizedResponse = (alternative = '') =>
  ApiUnauthorizedResponse({
    type: ErrorResponseDto,
    description:
      'No valid access token, or the session has ended; or step-up (RFC 9470): the last authentication is older than ' +
      `REAUTH_MAX_AGE${alternative}. Reauthenticate with POST /auth/reauthenticate and retry with the new access token`,
    headers: {
      'WWW-Authenticate': {
        description:
          'RFC 6750: `Bearer` without a token, `Bearer error="invalid_token"` for a refused one; RFC 9470: ' +
          '`Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age=300` ' +
          '(max_age is REAUTH_MAX_AGE) when only a more recent authentication is missing',
        // The three challenges: bearerChallenge()'s two and InsufficientUserAuthenticationException's.
        schema: {
          type: 'string',
          maxLength: 200,
          pattern: '^Bearer( error="invalid_token"| error="insufficient_user_authentication", error_description="[^"]*", max_age=[0-9]+)?$',
        },
      },
    },
  });

/** The route needs an authentication younger than REAUTH_MAX_AGE (the module must import RecentAuthModule). */
export const RequiresRecentAuth = () => applyDecorators(UseGuards(RecentAuthGuard), ApiStepUpUnauthorizedResponse());

@Module({
  imports: [SessionaryConfigModule],
  providers: [RecentAuthPolicy],
  exports: [RecentAuthPolicy],
})
export class RecentAuthModule {}
