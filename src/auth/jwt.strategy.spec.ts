import 'reflect-metadata';
import { describe, it, mock } from 'node:test';
import assert from 'node:assert/strict';
import { createSecretKey, generateKeyPairSync, KeyObject, randomUUID } from 'node:crypto';
import type { ConfigService } from '@nestjs/config';
import * as jwt from 'jsonwebtoken';
import type { AppConfig } from '../config/config';
import { Strategy } from 'passport-jwt';
import type { KeyRing } from '../keys/key-ring.service';
import { accessTokenHeader, JwtStrategy } from './jwt.strategy';

const KEY = createSecretKey(Buffer.from('x'.repeat(32)));
const OTHER_KEY = createSecretKey(Buffer.from('y'.repeat(32)));
const EC = generateKeyPairSync('ec', { namedCurve: 'P-256' });

/**
 * The ring's lookup as the strategy uses it, over fixed keys: `k1` (HS256), `e1` (ES256),
 * `old` (HS256, retiring until `oldUntil`), and a key for tokens without kid when `kidless`.
 * (A stand-in for pure logic; the e2e tests use the real ring.)
 */
class FixedRing {
  oldUntil = Date.now() + 60_000;
  kidless: KeyObject | undefined;
  private readonly handlers: Array<() => void> = [];
  verificationKey(alg: unknown, kid: unknown): KeyObject | undefined {
    if (kid === undefined) return alg === 'HS256' ? this.kidless : undefined;
    if (kid === 'k1' && alg === 'HS256') return KEY;
    if (kid === 'e1' && alg === 'ES256') return EC.publicKey;
    if (kid === 'old' && alg === 'HS256' && Date.now() < this.oldUntil) return OTHER_KEY;
    return undefined;
  }
  verifiesUntil(alg: unknown, kid: unknown): number {
    if (!this.verificationKey(alg, kid)) return 0;
    return kid === 'old' ? this.oldUntil : Infinity;
  }
  onChange(handler: () => void): void {
    this.handlers.push(handler);
  }
  changed(): void {
    for (const handler of this.handlers) handler();
  }
}
const RING = new FixedRing() as unknown as KeyRing;
const CONFIG = {
  get: (k: string) => (({ JWT_ISSUER: 'sessionary', JWT_AUDIENCE: 'sessionary-api' }) as Record<string, string>)[k],
} as unknown as ConfigService<AppConfig, true>;

const USER_ID = randomUUID();
const SESSION_ID = randomUUID();

const b64 = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value), 'utf8').toString('base64url');

/** A JWT-shaped string with the given header; the header check never looks further. */
const withHeader = (header: unknown) => `${b64(header)}.${b64({ sub: USER_ID })}.c2lnbmF0dXJl`;

function claims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  const all: Record<string, unknown> = {
    sub: USER_ID,
    sid: SESSION_ID,
    jti: randomUUID(),
    iss: 'sessionary',
    aud: 'sessionary-api',
    iat: now,
    exp: now + 60,
    ...overrides,
  };
  // `undefined` removes a claim (jsonwebtoken refuses undefined values).
  return Object.fromEntries(Object.entries(all).filter(([, v]) => v !== undefined));
}

function sign(
  overrides: Record<string, unknown> = {},
  { key = KEY, alg = 'HS256', header = {} }: { key?: KeyObject; alg?: jwt.Algorithm; header?: Record<string, unknown> } = {},
): string {
  const kid = alg === 'ES256' ? 'e1' : 'k1';
  return jwt.sign(claims(overrides), key, { algorithm: alg, header: { alg, typ: 'at+jwt', kid, ...header } as jwt.JwtHeader });
}

type Outcome = { kind: 'success'; user: unknown } | { kind: 'fail'; info: unknown } | { kind: 'error'; error: unknown };

interface PassportStrategyApi {
  authenticate(req: unknown, options?: unknown): void;
  success(user: unknown, info?: unknown): void;
  fail(info?: unknown): void;
  error(error: unknown): void;
}

/**
 * Runs the strategy as passport does: on a per-request object deriving from the strategy,
 * with success/fail/error attached to it.
 */
function authenticate(authorization: string | undefined, strategy = new JwtStrategy(CONFIG, RING)): Promise<Outcome> {
  return new Promise((resolve) => {
    const s = Object.create(strategy) as PassportStrategyApi;
    s.success = (user) => resolve({ kind: 'success', user });
    s.fail = (info) => resolve({ kind: 'fail', info });
    s.error = (error) => resolve({ kind: 'error', error });
    s.authenticate({ headers: authorization === undefined ? {} : { authorization } });
  });
}

/** Refused as a failure (passport's 401), for the expected reason when one is given. */
async function assertRefused(authorization: string | undefined, reason?: RegExp): Promise<void> {
  const outcome = await authenticate(authorization);
  assert.equal(outcome.kind, 'fail', `expected a failure, got ${JSON.stringify(outcome)}`);
  if (reason && outcome.kind === 'fail') assert.match(String(outcome.info), reason);
}

describe('accessTokenHeader', () => {
  it('gives alg and kid of {alg, typ: at+jwt, kid}', () => {
    assert.deepEqual(accessTokenHeader(withHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'e1' })), { alg: 'ES256', kid: 'e1' });
  });

  it('gives no kid for a header without one (a token from before the ring)', () => {
    assert.deepEqual(accessTokenHeader(withHeader({ alg: 'HS256', typ: 'at+jwt' })), { alg: 'HS256', kid: undefined });
  });

  it('reads a real token signed like AccessTokenService does', () => {
    assert.deepEqual(accessTokenHeader(sign()), { alg: 'HS256', kid: 'k1' });
  });

  for (const [name, header] of [
    ['typ JWT', { alg: 'HS256', typ: 'JWT' }],
    ['a missing typ', { alg: 'HS256' }],
    ['a missing alg', { typ: 'at+jwt' }],
    ['a numeric alg', { alg: 256, typ: 'at+jwt' }],
    ['a numeric kid', { alg: 'HS256', typ: 'at+jwt', kid: 1 }],
    ['an object kid', { alg: 'HS256', typ: 'at+jwt', kid: { $ne: '' } }],
    ['a null header', null],
    ['an array header', [{ alg: 'HS256', typ: 'at+jwt' }]],
  ] as const) {
    it(`refuses ${name}`, () => {
      assert.equal(accessTokenHeader(withHeader(header)), undefined);
    });
  }

  for (const selector of ['jwk', 'jku', 'x5u', 'x5c', 'x5t', 'crit']) {
    it(`refuses a header carrying ${selector}`, () => {
      assert.equal(accessTokenHeader(withHeader({ alg: 'HS256', typ: 'at+jwt', kid: 'k1', [selector]: 'k1' })), undefined);
    });
  }

  for (const [name, raw] of [
    ['garbage', 'not a jwt at all'],
    ['non-JSON base64url', `${b64('{alg:HS256')}.e30.x`],
    ['an empty string', ''],
    ['a lone dot', '.'],
  ] as const) {
    it(`refuses ${name}`, () => {
      assert.equal(accessTokenHeader(raw), undefined);
    });
  }
});

// validate() sees the request (to remember the verified token); these have none.
const NO_TOKEN = { headers: {} } as never;

describe('JwtStrategy.validate', () => {
  const strategy = new JwtStrategy(CONFIG, RING);
  const good = { sub: USER_ID, sid: SESSION_ID, jti: 'f6a1b0c2', iat: 1_700_000_000, exp: 1_700_000_900 };

  it('returns {userId, sessionId, authTime} for uuid sub and sid with a string jti and numeric iat and exp', () => {
    assert.deepEqual(strategy.validate(NO_TOKEN, { ...good, auth_time: 1_699_999_000 }), {
      userId: USER_ID,
      sessionId: SESSION_ID,
      authTime: 1_699_999_000,
    });
  });

  it('reads a missing or non-numeric auth_time as 0 (a token from before step-up: never a recent authentication)', () => {
    for (const auth_time of [undefined, '1699999000', null, [1_699_999_000]]) {
      assert.deepEqual(
        strategy.validate(NO_TOKEN, { ...good, auth_time }),
        { userId: USER_ID, sessionId: SESSION_ID, authTime: 0 },
        String(auth_time),
      );
    }
  });

  it('accepts upper-case uuids, lower-cased as the database and the session cache key them', () => {
    const [sub, sid] = [USER_ID.toUpperCase(), SESSION_ID.toUpperCase()];
    assert.notEqual(sub, USER_ID);
    assert.deepEqual(strategy.validate(NO_TOKEN, { ...good, sub, sid }), { userId: USER_ID, sessionId: SESSION_ID, authTime: 0 });
  });

  for (const [name, payload] of [
    ['a missing sub', { ...good, sub: undefined }],
    ['a non-uuid sub', { ...good, sub: 'admin' }],
    ['a numeric sub', { ...good, sub: 42 }],
    ['a sub with a uuid plus a suffix', { ...good, sub: `${USER_ID}x` }],
    ['a sub with a uuid after a newline', { ...good, sub: `x\n${USER_ID}` }],
    ['a missing sid', { ...good, sid: undefined }],
    ['a non-uuid sid', { ...good, sid: 'not-a-uuid' }],
    ['an array sid', { ...good, sid: [SESSION_ID] }],
    ['a missing jti', { ...good, jti: undefined }],
    ['a numeric jti', { ...good, jti: 7 }],
    ['a missing iat', { ...good, iat: undefined }],
    ['a string iat', { ...good, iat: '1700000000' }],
    ['a missing exp', { ...good, exp: undefined }],
    ['a string exp', { ...good, exp: '1700000900' }],
    ['an empty payload', {}],
  ] as const) {
    it(`returns false for ${name}`, () => {
      assert.equal(strategy.validate(NO_TOKEN, payload as Record<string, unknown>), false);
    });
  }
});

describe('JwtStrategy through passport (real verification)', { timeout: 10_000 }, () => {
  // White-box: the ring already refuses any alg but the key's own, so no token can reach the
  // verifier's own list; this asserts the list (and issuer, audience, expiry) is configured anyway.
  it('passes the allowed algorithms, issuer, audience and expiry check to jsonwebtoken', () => {
    const options = (new JwtStrategy(CONFIG, RING) as unknown as { _verifOpts: Record<string, unknown> })._verifOpts;
    assert.deepEqual(options.algorithms, ['ES256', 'HS256']);
    assert.equal(options.issuer, 'sessionary');
    assert.equal(options.audience, 'sessionary-api');
    assert.equal(options.ignoreExpiration, false);
  });

  it('accepts a valid token and yields its claims', async () => {
    const outcome = await authenticate(`Bearer ${sign()}`);
    assert.deepEqual(outcome, { kind: 'success', user: { userId: USER_ID, sessionId: SESSION_ID, authTime: 0 } });
  });

  it('fails without an Authorization header', async () => {
    await assertRefused(undefined, /No auth token/);
  });

  it('fails for a token signed with another key', async () => {
    await assertRefused(`Bearer ${sign({}, { key: OTHER_KEY })}`, /invalid signature/);
  });

  it('fails for alg none (unsigned token)', async () => {
    const unsigned = `${b64({ alg: 'none', typ: 'at+jwt' })}.${b64(claims())}.`;
    await assertRefused(`Bearer ${unsigned}`, /Not an access token/);
  });

  it('fails for an HS256 header with the signature stripped', async () => {
    const [header, payload] = sign().split('.');
    await assertRefused(`Bearer ${header}.${payload}.`, /signature is required/);
  });

  it('fails for HS512 even with the right key (algorithm pinned)', async () => {
    const hs512 = sign({}, { alg: 'HS512' });
    assert.equal(jwt.verify(hs512, KEY, { algorithms: ['HS512'] }) !== null, true); // a genuinely valid HS512 token
    await assertRefused(`Bearer ${hs512}`, /Not an access token/);
  });

  it('fails for a wrong issuer', async () => {
    await assertRefused(`Bearer ${sign({ iss: 'someone-else' })}`, /issuer invalid/);
  });

  it('fails for a wrong audience', async () => {
    await assertRefused(`Bearer ${sign({ aud: 'another-api' })}`, /audience invalid/);
  });

  it('fails for an expired token', async () => {
    const now = Math.floor(Date.now() / 1000);
    await assertRefused(`Bearer ${sign({ iat: now - 120, exp: now - 60 })}`, /jwt expired/);
  });

  it('fails for a token not yet valid (nbf in the future)', async () => {
    const now = Math.floor(Date.now() / 1000);
    await assertRefused(`Bearer ${sign({ nbf: now + 3600 })}`, /not active/);
  });

  it('fails for typ JWT even when correctly signed', async () => {
    await assertRefused(`Bearer ${sign({}, { header: { typ: 'JWT' } })}`, /Not an access token/);
  });

  it('accepts a valid ES256 token of an ES256 key', async () => {
    const outcome = await authenticate(`Bearer ${sign({}, { key: EC.privateKey, alg: 'ES256' })}`);
    assert.deepEqual(outcome, { kind: 'success', user: { userId: USER_ID, sessionId: SESSION_ID, authTime: 0 } });
  });

  it('fails for a correctly signed token whose kid is not in the ring', async () => {
    await assertRefused(`Bearer ${sign({}, { header: { kid: 'k2' } })}`, /Not an access token/);
  });

  it('fails for a token without kid when the ring has no key for those', async () => {
    await assertRefused(`Bearer ${sign({}, { header: { kid: undefined } })}`, /Not an access token/);
  });

  it("fails for HS256 'signed' with an ES256 key's public key as the secret (key confusion)", async () => {
    const publicPem = EC.publicKey.export({ format: 'pem', type: 'spki' });
    const confused = jwt.sign(claims(), createSecretKey(Buffer.from(publicPem)), {
      algorithm: 'HS256',
      header: { alg: 'HS256', typ: 'at+jwt', kid: 'e1' },
    });
    await assertRefused(`Bearer ${confused}`, /Not an access token/);
  });

  it('fails for an ES256 token whose kid names an HS256 key', async () => {
    await assertRefused(`Bearer ${sign({}, { key: EC.privateKey, alg: 'ES256', header: { kid: 'k1' } })}`, /Not an access token/);
  });

  it("fails for a valid ES256 token whose signature is spelled otherwise (same bytes: its last character's spare bits changed)", async () => {
    const token = sign({}, { key: EC.privateKey, alg: 'ES256' });
    const [header, payload, signature] = token.split('.');
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    // 64 bytes in 86 characters: the last character's 4 lowest bits are beyond the last byte.
    const last = alphabet[alphabet.indexOf(signature.at(-1)!) ^ 1];
    const respelled = `${header}.${payload}.${signature.slice(0, -1)}${last}`;
    assert.notEqual(respelled, token);
    assert.deepEqual(Buffer.from(respelled.split('.')[2], 'base64url'), Buffer.from(signature, 'base64url'));
    // What the check is for: the library alone takes the other spelling as the same signature.
    assert.ok(jwt.verify(respelled, EC.publicKey, { algorithms: ['ES256'] }));
    assert.equal((await authenticate(`Bearer ${token}`)).kind, 'success');
    await assertRefused(`Bearer ${respelled}`, /Not an access token/);
  });

  it('accepts a retiring key until its time, then refuses it', async (t) => {
    const ring = RING as unknown as FixedRing;
    const token = sign({}, { key: OTHER_KEY, header: { kid: 'old' } });
    assert.equal((await authenticate(`Bearer ${token}`)).kind, 'success');
    t.mock.timers.enable({ apis: ['Date'], now: ring.oldUntil });
    await assertRefused(`Bearer ${token}`, /Not an access token/);
  });

  it('fails for a token without the "Bearer " prefix', async () => {
    await assertRefused(sign(), /No auth token/);
  });

  it('fails for a token under another scheme', async () => {
    await assertRefused(`Basic ${sign()}`, /No auth token/);
  });

  it('fails for a correctly signed token whose claims validate() refuses (non-uuid sub)', async () => {
    await assertRefused(`Bearer ${sign({ sub: 'admin' })}`);
  });

  it('fails for a correctly signed token without jti', async () => {
    await assertRefused(`Bearer ${sign({ jti: undefined })}`);
  });

  // jsonwebtoken checks `exp` only when present; RFC 9068 makes it REQUIRED in an at+jwt, and
  // validate() requires it (else a token signed with our key without one would never expire).
  // The refusals without a reason here are validate()'s: the same token with every claim is
  // accepted ('accepts a valid token and yields its claims').
  it('fails for a correctly signed token without exp', async () => {
    await assertRefused(`Bearer ${sign({ exp: undefined })}`);
  });
});

describe('JwtStrategy remembers verified tokens until exp', () => {
  const CACHING = {
    get: (k: string) => (({ JWT_ISSUER: 'sessionary', JWT_AUDIENCE: 'sessionary-api', SESSION_CACHE_MAX: 100 }) as Record<string, unknown>)[k],
  } as unknown as ConfigService<AppConfig, true>;

  /** Counts the signature verifications passport-jwt runs (its verifier is replaceable in tests). */
  function countVerifications(): { calls: () => number; restore: () => void } {
    const original = (Strategy as unknown as { JwtVerifier: (...args: unknown[]) => unknown }).JwtVerifier;
    const spy = mock.fn(original);
    (Strategy as unknown as { JwtVerifier: unknown }).JwtVerifier = spy;
    return { calls: () => spy.mock.callCount(), restore: () => ((Strategy as unknown as { JwtVerifier: unknown }).JwtVerifier = original) };
  }

  it('verifies a token once, then answers its claims without verifying again', async () => {
    const counter = countVerifications();
    try {
      const strategy = new JwtStrategy(CACHING, RING);
      const token = sign();
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(await authenticate(`Bearer ${token}`, strategy), {
          kind: 'success',
          user: { userId: USER_ID, sessionId: SESSION_ID, authTime: 0 },
        });
      }
      assert.equal(counter.calls(), 1);
    } finally {
      counter.restore();
    }
  });

  it('refuses a remembered token once its exp has come', async (t) => {
    const strategy = new JwtStrategy(CACHING, RING);
    const exp = Math.floor(Date.now() / 1000) + 30;
    const token = sign({ exp });
    assert.equal((await authenticate(`Bearer ${token}`, strategy)).kind, 'success');
    t.mock.timers.enable({ apis: ['Date'], now: exp * 1000 });
    await assertRefusedWith(strategy, token, /jwt expired/);
  });

  it("forgets a remembered token once its retiring key's time has come, before its exp", async (t) => {
    const ring = RING as unknown as FixedRing;
    const strategy = new JwtStrategy(CACHING, RING);
    // Its exp after the key's verify_until (a token of a key whose time was cut short).
    const token = sign({ exp: Math.floor(ring.oldUntil / 1000) + 600 }, { key: OTHER_KEY, header: { kid: 'old' } });
    assert.equal((await authenticate(`Bearer ${token}`, strategy)).kind, 'success');
    t.mock.timers.enable({ apis: ['Date'], now: ring.oldUntil });
    await assertRefusedWith(strategy, token, /Not an access token/);
  });

  it('never lets a forged token ride on a remembered one', async () => {
    const strategy = new JwtStrategy(CACHING, RING);
    const token = sign();
    assert.equal((await authenticate(`Bearer ${token}`, strategy)).kind, 'success');
    const [header, payload] = token.split('.');
    await assertRefusedWith(strategy, `${header}.${payload}.${'A'.repeat(43)}`, /invalid signature/);
    await assertRefusedWith(strategy, sign({}, { key: OTHER_KEY }), /invalid signature/);
  });

  it('forgets every remembered token when the ring changes', async () => {
    const counter = countVerifications();
    try {
      const strategy = new JwtStrategy(CACHING, RING);
      const token = sign();
      assert.equal((await authenticate(`Bearer ${token}`, strategy)).kind, 'success');
      (RING as unknown as FixedRing).changed();
      assert.equal((await authenticate(`Bearer ${token}`, strategy)).kind, 'success');
      assert.equal(counter.calls(), 2);
    } finally {
      counter.restore();
    }
  });

  it('remembers nothing with SESSION_CACHE_MAX unset or 0', async () => {
    const counter = countVerifications();
    try {
      const strategy = new JwtStrategy(CONFIG, RING);
      const token = sign();
      for (let i = 0; i < 3; i++) assert.equal((await authenticate(`Bearer ${token}`, strategy)).kind, 'success');
      assert.equal(counter.calls(), 3);
    } finally {
      counter.restore();
    }
  });

  async function assertRefusedWith(strategy: JwtStrategy, token: string, reason: RegExp): Promise<void> {
    const outcome = await authenticate(`Bearer ${token}`, strategy);
    assert.equal(outcome.kind, 'fail');
    if (outcome.kind === 'fail') assert.match(String(outcome.info), reason);
  }
});
