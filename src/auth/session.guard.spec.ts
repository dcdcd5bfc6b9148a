import 'reflect-metadata';
import { describe, it, beforeEach, mock } from 'node:test';
import assert from 'node:assert/strict';
import { createSecretKey, randomUUID } from 'node:crypto';
import { ExecutionContext, HttpException, SetMetadata, UnauthorizedException } from '@nestjs/common';
import type { ConfigService } from '@nestjs/config';
import { Reflector } from '@nestjs/core';
import * as jwt from 'jsonwebtoken';
import type { AppConfig } from '../config/config';
import { AUTH_CONTEXT_KEY, AuthContext } from '../common/current-auth.decorator';
import { IS_PUBLIC_KEY, Public } from '../common/public.decorator';
import type { SessionsService } from '../sessions/sessions.service';
import { JwtAuthGuard } from './jwt-auth.guard';
import { JwtStrategy } from './jwt.strategy';
import { SessionGuard } from './session.guard';

class PrivateController {
  list(): void {}
}

class MixedController {
  @Public()
  open(): void {}

  closed(): void {}
}

@Public()
class PublicController {
  anything(): void {}

  @SetMetadata(IS_PUBLIC_KEY, false)
  explicitlyClosed(): void {}
}

type Request = Record<string, unknown>;

function contextFor(request: Request, handler: () => void, cls: abstract new (...args: never[]) => unknown): ExecutionContext {
  const http = { getRequest: () => request, getResponse: () => ({}), getNext: () => undefined };
  return {
    switchToHttp: () => http,
    getHandler: () => handler,
    getClass: () => cls,
    getType: () => 'http',
    getArgs: () => [request, {}],
    getArgByIndex: (i: number) => [request, {}][i],
  } as unknown as ExecutionContext;
}

function isUnauthorized(error: unknown): boolean {
  assert.ok(error instanceof UnauthorizedException, `expected UnauthorizedException, got ${String(error)}`);
  assert.equal(error.getStatus(), 401);
  return true;
}

describe('SessionGuard', () => {
  const userId = randomUUID();
  const sessionId = randomUUID();
  const auth: AuthContext = { userId, sessionId, role: 'user' as AuthContext['role'], expiresAt: new Date(), absoluteExpiresAt: new Date() };

  let jwtGuard: { canActivate: ReturnType<typeof mock.fn<(ctx: ExecutionContext) => Promise<boolean>>> };
  let sessions: { validateSession: ReturnType<typeof mock.fn<(sid: string, uid: string) => Promise<AuthContext>>> };
  let guard: SessionGuard;

  beforeEach(() => {
    // The fake JWT guard behaves like passport: it sets request.user and resolves true.
    jwtGuard = {
      canActivate: mock.fn(async (ctx: ExecutionContext) => {
        ctx.switchToHttp().getRequest<Request>().user = { userId, sessionId };
        return true;
      }),
    };
    sessions = { validateSession: mock.fn(async () => auth) };
    guard = new SessionGuard(new Reflector(), jwtGuard as unknown as JwtAuthGuard, sessions as unknown as SessionsService);
  });

  it('lets a @Public() handler through without calling the JWT guard or the session service', async () => {
    const request: Request = {};
    const result = await guard.canActivate(contextFor(request, MixedController.prototype.open, MixedController));
    assert.equal(result, true);
    assert.equal(jwtGuard.canActivate.mock.callCount(), 0);
    assert.equal(sessions.validateSession.mock.callCount(), 0);
    assert.equal(request[AUTH_CONTEXT_KEY], undefined);
  });

  it('lets every handler of a @Public() controller through without the JWT guard', async () => {
    const result = await guard.canActivate(contextFor({}, PublicController.prototype.anything, PublicController));
    assert.equal(result, true);
    assert.equal(jwtGuard.canActivate.mock.callCount(), 0);
  });

  it('lets handler metadata override the controller (public: false on a public controller is checked)', async () => {
    const request: Request = {};
    await guard.canActivate(contextFor(request, PublicController.prototype.explicitlyClosed, PublicController));
    assert.equal(jwtGuard.canActivate.mock.callCount(), 1);
    assert.deepEqual(request[AUTH_CONTEXT_KEY], auth);
  });

  it('checks a non-public handler of a controller that has public ones', async () => {
    await guard.canActivate(contextFor({}, MixedController.prototype.closed, MixedController));
    assert.equal(jwtGuard.canActivate.mock.callCount(), 1);
    assert.equal(sessions.validateSession.mock.callCount(), 1);
  });

  it('propagates a JWT guard failure as a 401 and never asks the session service', async () => {
    jwtGuard.canActivate.mock.mockImplementation(async () => {
      throw new UnauthorizedException('Invalid or missing access token');
    });
    const request: Request = {};
    await assert.rejects(guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), (e: unknown) => {
      isUnauthorized(e);
      assert.equal((e as HttpException).message, 'Invalid or missing access token');
      return true;
    });
    assert.equal(jwtGuard.canActivate.mock.callCount(), 1);
    assert.equal(sessions.validateSession.mock.callCount(), 0);
    assert.equal(request[AUTH_CONTEXT_KEY], undefined);
  });

  it('answers 401 for an inactive session and sets no auth context', async () => {
    sessions.validateSession.mock.mockImplementation(async () => {
      throw new UnauthorizedException('Session is not active');
    });
    const request: Request = {};
    await assert.rejects(guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), isUnauthorized);
    assert.equal(sessions.validateSession.mock.callCount(), 1);
    assert.equal(request[AUTH_CONTEXT_KEY], undefined);
  });

  it('on success sets request.auth to what validateSession returned, called with (sessionId, userId)', async () => {
    const request: Request = {};
    const result = await guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController));
    assert.equal(result, true);
    assert.equal(AUTH_CONTEXT_KEY, 'auth');
    assert.equal(request.auth, auth); // the very object the service returned
    assert.equal(sessions.validateSession.mock.callCount(), 1);
    assert.deepEqual(sessions.validateSession.mock.calls[0].arguments, [sessionId, userId]);
  });

  it('passes the claims of this request, not of another one', async () => {
    const otherUser = randomUUID();
    const otherSession = randomUUID();
    jwtGuard.canActivate.mock.mockImplementation(async (ctx: ExecutionContext) => {
      ctx.switchToHttp().getRequest<Request>().user = { userId: otherUser, sessionId: otherSession };
      return true;
    });
    await guard.canActivate(contextFor({}, PrivateController.prototype.list, PrivateController));
    assert.deepEqual(sessions.validateSession.mock.calls[0].arguments, [otherSession, otherUser]);
  });
});

describe('SessionGuard with the real JwtAuthGuard and JwtStrategy', { timeout: 10_000 }, () => {
  const key = createSecretKey(Buffer.from('x'.repeat(32)));
  const config = {
    get: (k: string) => ({ JWT_ISSUER: 'sessionary', JWT_AUDIENCE: 'sessionary-api' } as Record<string, string>)[k],
  } as unknown as ConfigService<AppConfig, true>;
  // Registers itself with passport under 'jwt', as the AuthModule would.
  new JwtStrategy(config, key);

  const userId = randomUUID();
  const sessionId = randomUUID();
  const auth: AuthContext = { userId, sessionId, role: 'user' as AuthContext['role'], expiresAt: new Date(), absoluteExpiresAt: new Date() };

  function token(claims: Record<string, unknown> = {}, signKey = key): string {
    const now = Math.floor(Date.now() / 1000);
    const payload = { sub: userId, sid: sessionId, jti: randomUUID(), iss: 'sessionary', aud: 'sessionary-api', iat: now, exp: now + 60, ...claims };
    return jwt.sign(payload, signKey, { algorithm: 'HS256', header: { alg: 'HS256', typ: 'at+jwt' } });
  }

  let sessions: { validateSession: ReturnType<typeof mock.fn<(sid: string, uid: string) => Promise<AuthContext>>> };
  let guard: SessionGuard;

  beforeEach(() => {
    sessions = { validateSession: mock.fn(async () => auth) };
    guard = new SessionGuard(new Reflector(), new JwtAuthGuard(), sessions as unknown as SessionsService);
  });

  it('accepts a valid access token and hands its claims to the session service', async () => {
    const request: Request = { headers: { authorization: `Bearer ${token()}` } };
    assert.equal(await guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), true);
    assert.deepEqual(request.user, { userId, sessionId });
    assert.deepEqual(sessions.validateSession.mock.calls[0].arguments, [sessionId, userId]);
    assert.equal(request.auth, auth);
  });

  it('answers 401 without a token and never asks the session service', async () => {
    const request: Request = { headers: {} };
    await assert.rejects(guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), isUnauthorized);
    assert.equal(sessions.validateSession.mock.callCount(), 0);
  });

  it('answers 401 for an expired token and never asks the session service', async () => {
    const now = Math.floor(Date.now() / 1000);
    const stale = token({ iat: now - 120, exp: now - 60 });
    const request: Request = { headers: { authorization: `Bearer ${stale}` } };
    await assert.rejects(guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), isUnauthorized);
    assert.equal(sessions.validateSession.mock.callCount(), 0);
  });

  it('answers 401 for a token signed with another key', async () => {
    const other = token({}, createSecretKey(Buffer.from('y'.repeat(32))));
    const request: Request = { headers: { authorization: `Bearer ${other}` } };
    await assert.rejects(guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), isUnauthorized);
    assert.equal(sessions.validateSession.mock.callCount(), 0);
  });
});
