import 'reflect-metadata';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ExecutionContext } from '@nestjs/common';
import type { ConfigService } from '@nestjs/config';
import type { AppConfig } from '../config/config';
import { AUTH_CONTEXT_KEY } from './current-auth.decorator';
import { InsufficientUserAuthenticationException } from './insufficient-user-authentication.exception';
import { RecentAuthGuard, RecentAuthPolicy } from './recent-auth';

const policyWith = (maxAge: number) => new RecentAuthPolicy({ get: () => maxAge } as unknown as ConfigService<AppConfig, true>);

describe('RecentAuthPolicy', () => {
  const now = 1_765_000_000_000;
  const policy = policyWith(300);

  it('counts an authentication younger than REAUTH_MAX_AGE as recent, and one that old or older as not', () => {
    assert.equal(policy.isRecent({ authTime: now / 1000 }, now), true);
    assert.equal(policy.isRecent({ authTime: now / 1000 - 299 }, now), true);
    assert.equal(policy.isRecent({ authTime: now / 1000 - 300 }, now), false);
    assert.equal(policy.isRecent({ authTime: now / 1000 - 3600 }, now), false);
  });

  it('never counts a token without auth_time (0) as recent', () => {
    assert.equal(policyWith(2_147_483_647).isRecent({ authTime: 0 }, now), false);
  });

  it('throws the RFC 9470 401 with REAUTH_MAX_AGE as max_age, and passes a recent one', () => {
    assert.doesNotThrow(() => policy.requireRecent({ authTime: Date.now() / 1000 }));
    assert.throws(
      () => policyWith(42).requireRecent({ authTime: 0 }, 'Send currentPassword'),
      (e: unknown) => {
        assert.ok(e instanceof InsufficientUserAuthenticationException);
        assert.equal(e.getStatus(), 401);
        assert.deepEqual(e.getResponse(), { statusCode: 401, error: 'Unauthorized', message: 'Send currentPassword' });
        assert.match(e.challenge, /^Bearer error="insufficient_user_authentication", error_description="[^"]+", max_age=42$/);
        return true;
      },
    );
  });
});

describe('RecentAuthGuard', () => {
  const guard = new RecentAuthGuard(policyWith(300));
  const contextWith = (request: Record<string, unknown>) => ({ switchToHttp: () => ({ getRequest: () => request }) }) as unknown as ExecutionContext;

  it("lets a recent caller through and refuses a stale one with the step-up 401, from the request's auth context", () => {
    assert.equal(guard.canActivate(contextWith({ [AUTH_CONTEXT_KEY]: { authTime: Math.floor(Date.now() / 1000) } })), true);
    assert.throws(
      () => guard.canActivate(contextWith({ [AUTH_CONTEXT_KEY]: { authTime: Math.floor(Date.now() / 1000) - 301 } })),
      InsufficientUserAuthenticationException,
    );
  });

  it('fails closed on a route without an authenticated session (a misplaced @Public())', () => {
    assert.throws(() => guard.canActivate(contextWith({})), /without an authenticated session/);
  });
});
