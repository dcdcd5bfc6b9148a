import 'reflect-metadata';
import { describe, it, beforeEach, mock } from 'node:test';
import assert from 'node:assert/strict';
import { createSecretKey, KeyObject, randomUUID } from 'node:crypto';
import {
  ExecutionContext,
  HttpException,
  Logger,
  LoggerService,
  ServiceUnavailableException,
  SetMetadata,
  UnauthorizedException,
} from '@nestjs/common';
import type { ConfigService } from '@nestjs/config';
import { Reflector } from '@nestjs/core';
import * as jwt from 'jsonwebtoken';
import type { AppConfig } from '../config/config';
import { ActiveSession, AUTH_CONTEXT_KEY, AuthContext } from '../common/current-auth.decorator';
import { IS_PUBLIC_KEY, Public } from '../common/public.decorator';
import type { SessionsService } from '../sessions/sessions.service';
import { JwtAuthGuard } from './jwt-auth.guard';
import { JwtStrategy } from './jwt.strategy';
import { SessionGuard } from './session.guard';
import { OtherTransportRefusedError } from '../common/other-transports';
import type { KeyRing } from '../keys/key-ring.service';

/** The ring's lookup over one HS256 key, for tokens without kid (the strategy's own tests cover kids). */
function ringOf(key: KeyObject): KeyRing {
  return {
    verificationKey: (alg: unknown, kid: unknown) => (alg === 'HS256' && kid === undefined ? key : undefined),
    verifiesUntil: (alg: unknown, kid: unknown) => (alg === 'HS256' && kid === undefined ? Infinity : 0),
    onChange: () => undefined,
  } as unknown as KeyRing;
}

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

/** A strategy that has verified no token before: every request goes through the JWT guard. */
const NOTHING_REMEMBERED = { rememberedClaims: () => undefined } as unknown as JwtStrategy;

/** A reply that records the headers set on it, as Fastify's would send them. */
class RecordingReply {
  readonly headers: Record<string, string> = {};
  header(name: string, value: string): this {
    this.headers[name.toLowerCase()] = value;
    return this;
  }
}

function contextFor(
  request: Request,
  handler: () => void,
  cls: abstract new (...args: never[]) => unknown,
  reply = new RecordingReply(),
): ExecutionContext {
  const http = { getRequest: () => request, getResponse: () => reply, getNext: () => undefined };
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
  const authTime = 1_765_000_000;
  const auth: ActiveSession = { userId, sessionId, role: 'user' as AuthContext['role'], expiresAt: new Date(), absoluteExpiresAt: new Date() };

  let jwtGuard: { canActivate: ReturnType<typeof mock.fn<(ctx: ExecutionContext) => Promise<boolean>>> };
  let sessions: { validateSession: ReturnType<typeof mock.fn<(sid: string, uid: string) => Promise<ActiveSession>>> };
  let guard: SessionGuard;

  beforeEach(() => {
    // The fake JWT guard behaves like passport: it sets request.user and resolves true.
    jwtGuard = {
      canActivate: mock.fn(async (ctx: ExecutionContext) => {
        ctx.switchToHttp().getRequest<Request>().user = { userId, sessionId, authTime };
        return true;
      }),
    };
    sessions = { validateSession: mock.fn(async () => auth) };
    guard = new SessionGuard(new Reflector(), jwtGuard as unknown as JwtAuthGuard, NOTHING_REMEMBERED, sessions as unknown as SessionsService);
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
    assert.deepEqual(request[AUTH_CONTEXT_KEY], { ...auth, authTime });
  });

  it('checks a non-public handler of a controller that has public ones', async () => {
    await guard.canActivate(contextFor({}, MixedController.prototype.closed, MixedController));
    assert.equal(jwtGuard.canActivate.mock.callCount(), 1);
    assert.equal(sessions.validateSession.mock.callCount(), 1);
  });

  it("refuses another transport's handler not marked @Public(), logging one line that names it, and its error tells a client only Forbidden", async () => {
    const errors: unknown[][] = [];
    Logger.overrideLogger({ log() {}, warn() {}, error: (...args: unknown[]) => void errors.push(args) } as LoggerService);
    try {
      const rpc = { ...contextFor({}, PrivateController.prototype.list, PrivateController), getType: () => 'rpc' } as unknown as ExecutionContext;
      assert.throws(
        () => guard.canActivate(rpc),
        (e: unknown) => e instanceof OtherTransportRefusedError && e.message === 'Forbidden',
      );
    } finally {
      Logger.overrideLogger(false);
    }
    assert.equal(errors.length, 1);
    assert.match(String(errors[0][0]), /PrivateController\.list is a handler of another transport \(rpc\) that is not marked @Public\(\)/);
    assert.equal(jwtGuard.canActivate.mock.callCount(), 0);
    assert.equal(sessions.validateSession.mock.callCount(), 0);
  });

  it('propagates a JWT guard failure as a 401 and never asks the session service', async () => {
    jwtGuard.canActivate.mock.mockImplementation(async () => {
      throw new UnauthorizedException('Invalid or missing access token');
    });
    const request: Request = {};
    await assert.rejects(
      async () => guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)),
      (e: unknown) => {
        isUnauthorized(e);
        assert.equal((e as HttpException).message, 'Invalid or missing access token');
        return true;
      },
    );
    assert.equal(jwtGuard.canActivate.mock.callCount(), 1);
    assert.equal(sessions.validateSession.mock.callCount(), 0);
    assert.equal(request[AUTH_CONTEXT_KEY], undefined);
  });

  it('answers 401 for an inactive session and sets no auth context', async () => {
    sessions.validateSession.mock.mockImplementation(async () => {
      throw new UnauthorizedException('Session is not active');
    });
    const request: Request = {};
    await assert.rejects(async () => guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), isUnauthorized);
    assert.equal(sessions.validateSession.mock.callCount(), 1);
    assert.equal(request[AUTH_CONTEXT_KEY], undefined);
  });

  it("on success sets request.auth to what validateSession returned plus the token's auth_time, called with (sessionId, userId)", async () => {
    const request: Request = {};
    const result = await guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController));
    assert.equal(result, true);
    assert.equal(AUTH_CONTEXT_KEY, 'auth');
    assert.deepEqual(request.auth, { ...auth, authTime });
    // A new object: the service's answer (possibly shared by other requests) is left as it was.
    assert.notEqual(request.auth, auth);
    assert.equal('authTime' in auth, false);
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
    get: (k: string) => (({ JWT_ISSUER: 'sessionary', JWT_AUDIENCE: 'sessionary-api' }) as Record<string, string>)[k],
  } as unknown as ConfigService<AppConfig, true>;
  // It remembers no token (SESSION_CACHE_MAX unset).
  const strategy = new JwtStrategy(config, ringOf(key));

  const userId = randomUUID();
  const sessionId = randomUUID();
  const auth: ActiveSession = { userId, sessionId, role: 'user' as AuthContext['role'], expiresAt: new Date(), absoluteExpiresAt: new Date() };

  function token(claims: Record<string, unknown> = {}, signKey = key): string {
    const now = Math.floor(Date.now() / 1000);
    const payload = { sub: userId, sid: sessionId, jti: randomUUID(), iss: 'sessionary', aud: 'sessionary-api', iat: now, exp: now + 60, ...claims };
    return jwt.sign(payload, signKey, { algorithm: 'HS256', header: { alg: 'HS256', typ: 'at+jwt' } });
  }

  let sessions: { validateSession: ReturnType<typeof mock.fn<(sid: string, uid: string) => Promise<ActiveSession>>> };
  let guard: SessionGuard;

  beforeEach(() => {
    sessions = { validateSession: mock.fn(async () => auth) };
    guard = new SessionGuard(new Reflector(), new JwtAuthGuard(strategy), strategy, sessions as unknown as SessionsService);
  });

  it('accepts a valid access token and hands its claims to the session service', async () => {
    const request: Request = { headers: { authorization: `Bearer ${token()}` } };
    assert.equal(await guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), true);
    // No auth_time in the token: 0, never a recent authentication.
    assert.deepEqual(request.user, { userId, sessionId, authTime: 0 });
    assert.deepEqual(sessions.validateSession.mock.calls[0].arguments, [sessionId, userId]);
    assert.deepEqual(request.auth, { ...auth, authTime: 0 });
  });

  it("hands on the token's auth_time when it is a number, and 0 for anything else", async () => {
    for (const [value, expected] of [
      [1_765_432_100, 1_765_432_100],
      ['1765432100', 0],
      [null, 0],
    ] as const) {
      const request: Request = { headers: { authorization: `Bearer ${token({ auth_time: value })}` } };
      assert.equal(await guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), true);
      assert.equal((request.auth as AuthContext).authTime, expected, String(value));
    }
  });

  it('answers 401 without a token and never asks the session service', async () => {
    const request: Request = { headers: {} };
    const reply = new RecordingReply();
    await assert.rejects(
      async () => guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController, reply)),
      isUnauthorized,
    );
    assert.equal(sessions.validateSession.mock.callCount(), 0);
    // RFC 6750: no credentials, no error code.
    assert.equal(reply.headers['www-authenticate'], 'Bearer');
  });

  it('challenges with invalid_token alike for a bad token and for an ended session', async () => {
    const forged = new RecordingReply();
    const other = token({}, createSecretKey(Buffer.from('v'.repeat(32))));
    await assert.rejects(
      async () =>
        guard.canActivate(contextFor({ headers: { authorization: `Bearer ${other}` } }, PrivateController.prototype.list, PrivateController, forged)),
      isUnauthorized,
    );
    assert.equal(forged.headers['www-authenticate'], 'Bearer error="invalid_token"');
    sessions.validateSession.mock.mockImplementation(async () => {
      throw new UnauthorizedException('Session is not active');
    });
    const ended = new RecordingReply();
    await assert.rejects(
      async () =>
        guard.canActivate(
          contextFor({ headers: { authorization: `Bearer ${token()}` } }, PrivateController.prototype.list, PrivateController, ended),
        ),
      isUnauthorized,
    );
    assert.equal(ended.headers['www-authenticate'], 'Bearer error="invalid_token"');
  });

  it('adds no challenge when the answer is not a 401 (the database is down: 503)', async () => {
    sessions.validateSession.mock.mockImplementation(async () => {
      throw new ServiceUnavailableException('Service temporarily unavailable');
    });
    const reply = new RecordingReply();
    await assert.rejects(
      async () =>
        guard.canActivate(
          contextFor({ headers: { authorization: `Bearer ${token()}` } }, PrivateController.prototype.list, PrivateController, reply),
        ),
      ServiceUnavailableException,
    );
    assert.equal(reply.headers['www-authenticate'], undefined);
  });

  it('answers 401 for an expired token and never asks the session service', async () => {
    const now = Math.floor(Date.now() / 1000);
    const stale = token({ iat: now - 120, exp: now - 60 });
    const request: Request = { headers: { authorization: `Bearer ${stale}` } };
    await assert.rejects(async () => guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), isUnauthorized);
    assert.equal(sessions.validateSession.mock.callCount(), 0);
  });

  it('answers 401 for a token signed with another key', async () => {
    const other = token({}, createSecretKey(Buffer.from('y'.repeat(32))));
    const request: Request = { headers: { authorization: `Bearer ${other}` } };
    await assert.rejects(async () => guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController)), isUnauthorized);
    assert.equal(sessions.validateSession.mock.callCount(), 0);
  });
});

describe('SessionGuard with a strategy that remembers verified tokens', { timeout: 10_000 }, () => {
  const key = createSecretKey(Buffer.from('z'.repeat(32)));
  const settings: Record<string, unknown> = { JWT_ISSUER: 'sessionary', JWT_AUDIENCE: 'sessionary-api', SESSION_CACHE_MAX: 10 };
  const config = { get: (k: string) => settings[k] } as unknown as ConfigService<AppConfig, true>;
  const userId = randomUUID();
  const sessionId = randomUUID();
  const auth: ActiveSession = { userId, sessionId, role: 'user' as AuthContext['role'], expiresAt: new Date(), absoluteExpiresAt: new Date() };

  let strategy: JwtStrategy;
  let jwtGuard: JwtAuthGuard;
  let sessions: { validateSession: ReturnType<typeof mock.fn<(sid: string, uid: string) => Promise<ActiveSession>>> };
  let guard: SessionGuard;

  beforeEach(() => {
    strategy = new JwtStrategy(config, ringOf(key));
    jwtGuard = new JwtAuthGuard(strategy);
    mock.method(jwtGuard, 'canActivate');
    sessions = { validateSession: mock.fn(async () => auth) };
    guard = new SessionGuard(new Reflector(), jwtGuard, strategy, sessions as unknown as SessionsService);
  });

  function token(signKey = key): string {
    const now = Math.floor(Date.now() / 1000);
    const payload = { sub: userId, sid: sessionId, jti: randomUUID(), iss: 'sessionary', aud: 'sessionary-api', iat: now, exp: now + 60 };
    return jwt.sign(payload, signKey, { algorithm: 'HS256', header: { alg: 'HS256', typ: 'at+jwt' } });
  }
  const calls = () => (jwtGuard.canActivate as unknown as { mock: { callCount(): number } }).mock.callCount();
  const check = async (request: Request) => guard.canActivate(contextFor(request, PrivateController.prototype.list, PrivateController));

  it('verifies a token through passport once, then accepts it again without passport, still asking the session service', async () => {
    const bearer = `Bearer ${token()}`;
    await check({ headers: { authorization: bearer } });
    assert.equal(calls(), 1);
    const again: Request = { headers: { authorization: bearer } };
    assert.equal(await check(again), true);
    assert.equal(calls(), 1, 'the remembered token did not go through passport again');
    assert.deepEqual(again.user, { userId, sessionId, authTime: 0 });
    assert.deepEqual(again.auth, { ...auth, authTime: 0 });
    assert.equal(sessions.validateSession.mock.callCount(), 2, 'the session is checked on every request');
    assert.deepEqual(sessions.validateSession.mock.calls[1].arguments, [sessionId, userId]);
  });

  it('still refuses a token of another key after a valid one was remembered, and a refused session stays refused', async () => {
    const bearer = `Bearer ${token()}`;
    await check({ headers: { authorization: bearer } });
    await assert.rejects(check({ headers: { authorization: `Bearer ${token(createSecretKey(Buffer.from('w'.repeat(32))))}` } }), isUnauthorized);
    assert.equal(calls(), 2, 'the forged token went through passport');
    sessions.validateSession.mock.mockImplementation(async () => {
      throw new UnauthorizedException('Session is not active');
    });
    const request: Request = { headers: { authorization: bearer } };
    await assert.rejects(check(request), isUnauthorized);
    assert.equal(request.auth, undefined);
  });
});
