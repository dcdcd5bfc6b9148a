import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { AUDIT_EVENT_TYPES } from '../src/audit/audit-event.entity';
import { bearer, login, newUserInput, registerUser, TestUser, Tokens } from './helpers/factories';
import {
  AuthMaterial,
  cursorLike,
  emailish,
  FieldGenerators,
  headerValue,
  hostileString,
  invalidAuthorization,
  isoLike,
  JSON_CONTENT_TYPES,
  jsonText,
  jsonTree,
  malformedJsonBody,
  mutatedBody,
  OTHER_CONTENT_TYPES,
  percentEncode,
  queryString,
  refreshTokenShaped,
  urlComponent,
  uuidLike,
  validPassword,
  validUsername,
} from './helpers/fuzz-arbitraries';
import { DbFingerprint, DbFingerprinter, diffFingerprints } from './helpers/fuzz-db';
import { describeRequest, describeResponse, FuzzClient, FuzzRequest, FuzzResponse, rawExchange } from './helpers/fuzz-http';
import { createTestApp, TestApp } from './helpers/test-app';

/**
 * Property-based fuzzing of every route against the real app on real PostgreSQL: generated
 * bodies, query strings, path parameters and headers must never get a 5xx, never leak a stack,
 * SQL or a hash, and, when refused, change nothing in the database.
 *
 * FUZZ_SEED=<n> replays a run (fast-check prints the seed and path of a failure; every
 * property uses the same seed). FUZZ_RUNS=<factor> scales every property's number of runs.
 */
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : (Date.now() ^ Math.floor(Math.random() * 0x7fffffff)) | 0;
const SCALE = process.env.FUZZ_RUNS ? Number(process.env.FUZZ_RUNS) : 1;
assert.ok(Number.isInteger(SEED), 'FUZZ_SEED must be an integer');
assert.ok(SCALE > 0, 'FUZZ_RUNS must be a positive factor');
function settings<T>(numRuns: number): fc.Parameters<T> {
  return { seed: SEED, numRuns: Math.max(1, Math.round(numRuns * SCALE)) };
}

type Auth = 'none' | 'user' | 'admin';

interface RouteSpec {
  method: string;
  /** With `:id` where the path has a parameter. */
  path: string;
  /** Who gets past the guards. */
  auth: Auth;
  /** The DTO's fields and generators of valid values, one set per accepted shape. */
  bodies?: FieldGenerators[];
  query?: Record<string, fc.Arbitrary<string>>;
  /** Values for `:id` (before encoding). */
  id?: fc.Arbitrary<string>;
  /** A 2xx of this route writes by contract, so the "changes nothing" check does not apply to it. */
  writesOn2xx?: boolean;
  /**
   * Ends the caller's session whenever it reaches the handler (logout): a valid token is only
   * sent with a body that cannot parse, or the fuzzer would log itself out.
   */
  endsSession?: boolean;
  /**
   * A wrong password is audited (LOGIN_FAILED) and counted (login_throttle) by design: on every
   * 401 of a login ('always'), and on a 401 of a re-authentication whenever a password was
   * actually checked ('when-checked').
   */
  auditsFailure?: 'always' | 'when-checked';
  /**
   * A 404 of this route is a refused attempt, audited as ACCESS_DENIED by design (ending a
   * session that is not one's own, ASVS 16.3.2), bounded like the roles guard's 403.
   */
  auditsNotFound?: boolean;
}

/** One generated request, printed by fast-check as the route and the request, not the generators. */
interface Case {
  route?: RouteSpec;
  req: FuzzRequest;
  must4xx?: boolean;
}

function fuzzCase(route: RouteSpec | undefined, req: FuzzRequest, must4xx = false): Case {
  return Object.assign(
    { route, req, must4xx },
    { [fc.toStringMethod]: () => `${route ? `${route.method} ${route.path}` : 'no known route'}: ${describeRequest(req)}` },
  );
}

const auditQuery = {
  type: fc.oneof(
    fc.constantFrom(...AUDIT_EVENT_TYPES),
    fc.constantFrom(...AUDIT_EVENT_TYPES).map((s) => s.toLowerCase()),
    hostileString,
  ),
  from: isoLike,
  to: isoLike,
  limit: fc.oneof(
    fc.integer({ min: -5, max: 105 }).map(String),
    fc.constantFrom('', '1e2', '0x10', '1.5', '-0', 'NaN', 'Infinity', '9'.repeat(400), ' 5', '5 ', '+5', '05'),
  ),
  cursor: cursorLike,
};

// What a response must never carry (API.md: "No stack trace, SQL text, driver error object or
// password hash ever reaches a client"). A match that the request itself contains is an
// echo (e.g. an unknown property named in a 400), not a leak.
const LEAKS: Array<[string, RegExp]> = [
  ['a stack trace', /\bat (?:async )?[\w$.<>]+ \(?[^\s()]*:\d+:\d+\)?/],
  ['a source path', /(?:\/|\\)(?:src|dist|node_modules)(?:\/|\\)[^\s"']+\.[jt]s\b/],
  ['node_modules', /node_modules/],
  ['a bcrypt hash', /\$2[abxy]\$/],
  ['a TypeORM error', /QueryFailedError|EntityNotFoundError|TypeORMError|EntityPropertyNotFoundError/],
  [
    'a PostgreSQL error',
    new RegExp(
      [
        'driverError',
        'SQLSTATE',
        'syntax error at or near',
        'invalid input syntax for',
        'violates (?:unique|foreign key|check|not-null) constraint',
        'duplicate key value',
        'relation "[^"]*" does not exist',
        'invalid byte sequence for encoding',
        'out of range for type',
        'date/time field value out of range',
        'current transaction is aborted',
        'time zone displacement out of range',
      ].join('|'),
      'i',
    ),
  ],
  ['SQL text', /\bSELECT\s[\s\S]{0,200}?\sFROM\s|\bINSERT\s+INTO\b|\bUPDATE\s+"?\w+"?\s+SET\b|\bDELETE\s+FROM\b/i],
  ['a connection string', /postgres(?:ql)?:\/\//i],
];

const BCRYPT_HASH = /\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}/;

/** The first of LEAKS that an answer shows in its own words (not an echo of the request), if any. */
function leakIn(text: string, req: FuzzRequest): string | undefined {
  const haystack = requestHaystack(req);
  const ownWords = withoutEchoes(text, req);
  for (const [what, pattern] of LEAKS) {
    const match = pattern.exec(ownWords);
    if (match && !haystack.includes(match[0])) return `${what} (${JSON.stringify(match[0])})`;
  }
  return undefined;
}

/** The request's pieces in one text: a leak pattern's match found in it is an echo. */
function requestHaystack(req: FuzzRequest): string {
  return requestPieces(req).join('\n');
}

/**
 * The response's text with every piece of the request it could be echoing (of three characters
 * or more, longest first, raw and JSON-escaped) replaced by U+241F: a leak pattern must then
 * match the server's own words. Checking only that a match is found in the request was not
 * enough: a 400 naming two unknown properties, `$$; SELECT 1; $$` and `' UNION SELECT
 * password_hash FROM users --`, read as SQL text from the first SELECT to the second FROM,
 * across the validator's words between them (fuzz seed 822053259).
 */
function withoutEchoes(text: string, req: FuzzRequest): string {
  const pieces = [...new Set(requestPieces(req))].filter((p) => p.length >= 3).sort((x, y) => y.length - x.length);
  let scrubbed = text;
  for (const piece of pieces) {
    for (const form of new Set([piece, JSON.stringify(piece).slice(1, -1)])) scrubbed = scrubbed.split(form).join('\u241f');
  }
  return scrubbed;
}

/** Every string the server could have read from the request: raw, percent-decoded and JSON-decoded. */
function requestPieces(req: FuzzRequest): string[] {
  const parts: string[] = [req.path, ...Object.values(req.headers)];
  for (const piece of req.path.split(/[/?&=;]/)) {
    try {
      parts.push(decodeURIComponent(piece.replace(/\+/g, ' ')));
    } catch {
      // not decodable: the raw form is already there
    }
  }
  if (req.body !== undefined) {
    const text = Buffer.isBuffer(req.body) ? req.body.toString('utf8') : req.body;
    parts.push(text);
    try {
      const walk = (v: unknown): void => {
        if (typeof v === 'string') parts.push(v);
        if (!v || typeof v !== 'object') return;
        for (const [k, x] of Object.entries(v)) {
          parts.push(k);
          walk(x);
        }
      };
      walk(JSON.parse(text));
    } catch {
      // not JSON
    }
  }
  return parts;
}

describe("the fuzzer's leak check", () => {
  const post = (body: unknown): FuzzRequest => ({
    method: 'POST',
    path: '/api/v1/auth/refresh',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

  it('passes echoes of the request, even two read together', () => {
    // Seed 822053259's answer: two unknown properties named, SQL-like only from one to the other.
    const req = post({ '$$; SELECT 1; $$': true, "' UNION SELECT password_hash FROM users --": '' });
    const answer = JSON.stringify({
      statusCode: 400,
      error: 'Bad Request',
      message: ['property $$; SELECT 1; $$ should not exist', "property ' UNION SELECT password_hash FROM users -- should not exist"],
    });
    assert.equal(leakIn(answer, req), undefined);
  });

  it("flags the server's own SQL, driver errors and stack traces, echoes inside them or not", () => {
    const req = post({ email: "x' OR 1=1 --" });
    assert.match(leakIn(JSON.stringify({ message: "select id from users where email = 'x' OR 1=1 --'" }), req) ?? '', /^SQL text/);
    assert.match(leakIn(JSON.stringify({ message: 'invalid input syntax for type uuid: "x\' OR 1=1 --"' }), req) ?? '', /^a PostgreSQL error/);
    assert.match(leakIn('Error: x\n    at AuthService.login (/app/dist/src/auth/auth.service.js:10:5)', req) ?? '', /^a stack trace/);
  });
});

describe('fuzz: hostile input gets a 4xx, leaks nothing and changes nothing (e2e)', () => {
  let t: TestApp;
  let client: FuzzClient;
  let fingerprints: DbFingerprinter;
  let baseline: DbFingerprint;
  let user: TestUser;
  let userTokens: Tokens;
  let admin: TestUser;
  let adminTokens: Tokens;
  let victim: TestUser;
  let victimTokens: Tokens;
  let material: AuthMaterial;
  let routes: RouteSpec[];
  let secrets: string[];
  const statuses = new Map<string, Map<number, number>>();
  let writes2xx = 0;

  before(async () => {
    t = await createTestApp();
    client = await FuzzClient.listen(t.app.getHttpServer());
    user = await registerUser(t.http);
    userTokens = await login(t.http, user);
    admin = await registerUser(t.http);
    await t.db.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
    adminTokens = await login(t.http, admin);
    // Someone else, whose ids the fuzzer may use but must not be able to touch.
    victim = await registerUser(t.http);
    victimTokens = await login(t.http, victim);
    // A token whose signature is fine but whose session has ended.
    const ended = await login(t.http, user);
    await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(ended)).expect(204);
    material = {
      userToken: userTokens.accessToken,
      endedSessionToken: ended.accessToken,
      refreshToken: userTokens.refreshToken,
      userId: user.id,
      sessionId: userTokens.sessionId,
    };
    secrets = [t.config.JWT_SECRET, t.config.PASSWORD_PEPPER].filter((s) => typeof s === 'string' && s.length >= 8);

    const known = fc.constantFrom(user.email, user.username, admin.email, victim.email);
    routes = [
      {
        method: 'POST',
        path: '/api/v1/auth/register',
        auth: 'none',
        bodies: [
          {
            username: fc.oneof(validUsername, fc.constant(user.username)),
            email: fc.oneof(emailish, fc.constant(victim.email)),
            password: validPassword,
          },
        ],
        writesOn2xx: true,
      },
      {
        method: 'POST',
        path: '/api/v1/auth/login',
        auth: 'none',
        // Never the right password: a login that succeeds opens a session.
        bodies: [
          { email: fc.oneof(emailish, known), password: fc.oneof(validPassword, hostileString) },
          { username: fc.oneof(validUsername, known), password: fc.oneof(validPassword, hostileString) },
        ],
        auditsFailure: 'always',
      },
      // Only tokens that were never issued: presenting a rotated one ends its session by design.
      { method: 'POST', path: '/api/v1/auth/refresh', auth: 'none', bodies: [{ refreshToken: refreshTokenShaped }] },
      { method: 'POST', path: '/api/v1/auth/logout', auth: 'user', endsSession: true },
      // Never the right password: a success would rotate the refresh token the fuzzer holds.
      {
        method: 'POST',
        path: '/api/v1/auth/reauthenticate',
        auth: 'user',
        bodies: [{ password: fc.oneof(validPassword, hostileString) }],
        auditsFailure: 'when-checked',
      },
      { method: 'GET', path: '/api/v1/users/me', auth: 'user' },
      {
        method: 'PATCH',
        path: '/api/v1/users/me',
        auth: 'user',
        // currentPassword is never the right one, so the email never changes; a valid new
        // username does (a 2xx that writes by contract).
        bodies: [
          { username: validUsername },
          { email: fc.oneof(emailish, known), currentPassword: validPassword },
          { username: validUsername, email: emailish, currentPassword: hostileString },
        ],
        writesOn2xx: true,
        auditsFailure: 'when-checked',
      },
      {
        method: 'PUT',
        path: '/api/v1/users/me/password',
        auth: 'user',
        bodies: [{ currentPassword: fc.oneof(validPassword, hostileString), newPassword: validPassword }],
        auditsFailure: 'when-checked',
      },
      { method: 'GET', path: '/api/v1/sessions', auth: 'user' },
      // The caller has no other session, so this ends nothing.
      { method: 'DELETE', path: '/api/v1/sessions', auth: 'user' },
      {
        method: 'DELETE',
        path: '/api/v1/sessions/:id',
        auth: 'user',
        id: fc.oneof(uuidLike, fc.constant(victimTokens.sessionId), hostileString),
        auditsNotFound: true,
      },
      { method: 'GET', path: '/api/v1/audit', auth: 'user', query: auditQuery },
      {
        method: 'GET',
        path: '/api/v1/admin/users/:id/sessions',
        auth: 'admin',
        id: fc.oneof(uuidLike, fc.constantFrom(user.id, victim.id, admin.id), hostileString),
      },
      // Never a real user's id: that would end sessions, by contract.
      { method: 'DELETE', path: '/api/v1/admin/users/:id/sessions', auth: 'admin', id: fc.oneof(uuidLike, hostileString) },
      {
        method: 'GET',
        path: '/api/v1/admin/audit',
        auth: 'admin',
        query: { ...auditQuery, userId: fc.oneof(uuidLike, fc.constantFrom(user.id, victim.id)) },
      },
      // Reads only: a 2xx export must leave the database as it was.
      {
        method: 'GET',
        path: '/api/v1/admin/audit/export',
        auth: 'admin',
        query: { type: auditQuery.type, from: auditQuery.from, to: auditQuery.to, userId: fc.oneof(uuidLike, fc.constantFrom(user.id, victim.id)) },
      },
      { method: 'GET', path: '/health/live', auth: 'none' },
      { method: 'GET', path: '/health/ready', auth: 'none' },
      { method: 'GET', path: '/metrics', auth: 'none' },
    ];

    // Every documented route is fuzzed: routes the table does not know yet get generic input,
    // and are treated as writing on success and ending the session (the safe assumptions).
    const doc = (await t.http.get('/docs-json')).body as { paths: Record<string, Record<string, unknown>> };
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const method of Object.keys(ops).map((m) => m.toUpperCase())) {
        const template = path.replace(/\{[^}]+\}/g, ':id');
        if (routes.some((r) => r.method === method && r.path === template)) continue;
        routes.push({
          method,
          path: template,
          auth: template.includes('/admin/') ? 'admin' : 'user',
          id: template.includes(':id') ? fc.oneof(uuidLike, hostileString) : undefined,
          query: method === 'GET' ? {} : undefined,
          bodies: method === 'GET' ? undefined : [{}],
          writesOn2xx: true,
          endsSession: method !== 'GET',
        });
      }
    }
    fingerprints = new DbFingerprinter(t.db);
  });

  after(async () => {
    client?.close();
    await t?.close();
  });

  // ------------------------------------------------------------------------------ oracle

  /**
   * The properties' one oracle: no 5xx; no leak; a 4xx in the error shape of API.md; and the
   * database exactly as before, unless the contract says this answer writes.
   */
  async function judge(route: RouteSpec | undefined, req: FuzzRequest, res: FuzzResponse, options: { must4xx?: boolean } = {}): Promise<void> {
    const key = route ? `${route.method} ${route.path}` : `${req.method} (other)`;
    const counts = statuses.get(key) ?? new Map<number, number>();
    counts.set(res.status, (counts.get(res.status) ?? 0) + 1);
    statuses.set(key, counts);

    const before = baseline;
    const after = await fingerprints.take();
    baseline = after; // the next request is judged against this, whatever happens below
    const shown = `\n  request:  ${describeRequest(req)}\n  response: ${describeResponse(res)}`;

    assert.ok(res.status < 500, `answered ${res.status}${shown}`);
    if (options.must4xx) assert.ok(res.status >= 400 && res.status < 500, `expected a 4xx, got ${res.status}${shown}`);

    const text = `${res.text}\n${JSON.stringify(res.headers)}`;
    for (const secret of secrets) assert.ok(!text.includes(secret), `response carries a server secret${shown}`);
    assert.doesNotMatch(text, BCRYPT_HASH, `response carries a password hash${shown}`);
    // A success may show what earlier requests stored (user agents in sessions and audit
    // events), so the textual patterns are for answers that are not successes.
    if (res.status >= 300) {
      const leak = leakIn(text, req);
      if (leak) assert.fail(`response carries ${leak}${shown}`);
    }

    if (res.status >= 400 && /json/.test(String(res.headers['content-type'])) && req.method !== 'HEAD') {
      const body = JSON.parse(res.text) as { statusCode?: unknown; error?: unknown; message?: unknown };
      const messageOk = typeof body.message === 'string' || (Array.isArray(body.message) && body.message.every((m) => typeof m === 'string'));
      assert.ok(body.statusCode === res.status && typeof body.error === 'string' && messageOk, `error body is not in the shape of API.md${shown}`);
    }

    if (res.status >= 200 && res.status < 300 && route?.writesOn2xx) {
      writes2xx++;
      return;
    }
    if (route?.auditsFailure && res.status === 401) {
      // Failed logins are audited (LOGIN_FAILED, and ACCOUNT_LOCKED when a back-off starts)
      // and counted in login_throttle by design (API.md, "Brute force"). So is a wrong current
      // password on a password or email change: users.service.ts verifyCurrentPassword checks
      // it under the login throttle and audits it as LOGIN_FAILED (ASVS 7.5.1). Those two
      // tables may change, and only by new events of those types (which move their chains'
      // heads); nothing else may.
      const diff = diffFingerprints(before, after, ['audit_events', 'audit_chain_heads', 'login_throttle']);
      assert.deepEqual(diff, [], `a failed login changed more than its audit event and counters${shown}`);
      if (route.auditsFailure === 'when-checked' && diffFingerprints(before, after).length === 0) return;
      assert.equal(
        await fingerprints.auditDigestUpTo(before.auditMaxSeq),
        before.tables.audit_events.digest,
        `a failed login changed existing audit events${shown}`,
      );
      const added = await fingerprints.auditEventsAfter(before.auditMaxSeq);
      assert.deepEqual(
        added.map((e) => e.type).filter((type) => type !== 'ACCOUNT_LOCKED'),
        ['LOGIN_FAILED'],
        `a failed login must add exactly one LOGIN_FAILED event${shown}`,
      );
      // API.md: no event ever records a password. (Short or header-borne values could match by chance.)
      let sent: { password?: unknown; currentPassword?: unknown } = {};
      try {
        sent = JSON.parse(String(req.body)) as typeof sent;
      } catch {
        // not JSON: nothing was checked
      }
      for (const password of [sent.password, sent.currentPassword]) {
        if (typeof password !== 'string' || password.length < 8 || Object.values(req.headers).some((h) => h.includes(password))) continue;
        assert.ok(!added.some((e) => e.text.includes(JSON.stringify(password).slice(1, -1))), `an audit event records the password${shown}`);
      }
      return;
    }
    if (res.status === 403 || (res.status === 404 && route?.auditsNotFound)) {
      // A user refused by the roles guard is audited as ACCESS_DENIED (at most once per session
      // and route a minute, so most refusals add nothing), which moves its chain's head;
      // nothing else may change. So is a user's attempt to end a session not their own (404).
      assert.deepEqual(
        diffFingerprints(before, after, ['audit_events', 'audit_chain_heads']),
        [],
        `a refusal changed more than its audit event${shown}`,
      );
      assert.equal(
        await fingerprints.auditDigestUpTo(before.auditMaxSeq),
        before.tables.audit_events.digest,
        `a refusal changed existing audit events${shown}`,
      );
      const added = await fingerprints.auditEventsAfter(before.auditMaxSeq);
      assert.ok(added.length <= 1 && added.every((e) => e.type === 'ACCESS_DENIED'), `a refusal may add one ACCESS_DENIED event, no other${shown}`);
      const headMoved = diffFingerprints(before, after).some((d) => d.startsWith('audit_chain_heads'));
      assert.equal(headMoved, added.length === 1, `a chain head moves exactly when an event is added${shown}`);
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
      assert.ok(!token || !added.some((e) => e.text.includes(token)), `an audit event records the access token${shown}`);
      return;
    }
    assert.deepEqual(diffFingerprints(before, after), [], `the database changed${shown}`);
  }

  async function send(route: RouteSpec | undefined, req: FuzzRequest, options: { must4xx?: boolean } = {}): Promise<FuzzResponse> {
    const res = await client.send(req);
    await judge(route, req, res, options);
    return res;
  }

  /** The fuzzer's sessions survived: otherwise later properties would only ever meet the guard. */
  async function assertStillLoggedIn(): Promise<void> {
    for (const tokens of [userTokens, adminTokens]) {
      const res = await client.send({ method: 'GET', path: '/api/v1/users/me', headers: { authorization: bearer(tokens) } });
      assert.equal(res.status, 200, `the fuzzer's session ended: ${describeResponse(res)}`);
    }
  }

  function report(ctx: { diagnostic(message: string): void }, name: string, sentBefore: number): void {
    ctx.diagnostic(`${name}: ${client.sent - sentBefore} requests, seed ${SEED}`);
  }

  // -------------------------------------------------------------------- request pieces

  const bodyRoutes = () => routes.filter((r) => r.bodies);

  /** A valid token for whoever the route is for (mostly), another valid one, none, or a bad one. */
  function authorization(route: RouteSpec, allowValid: boolean): fc.Arbitrary<string | undefined> {
    const bad = invalidAuthorization(material);
    if (!allowValid) return fc.oneof({ weight: 1, arbitrary: fc.constant(undefined) }, { weight: 4, arbitrary: bad });
    return fc.oneof(
      { weight: route.auth === 'admin' ? 1 : 6, arbitrary: fc.constant(bearer(userTokens)) },
      { weight: route.auth === 'admin' ? 6 : 1, arbitrary: fc.constant(bearer(adminTokens)) },
      { weight: 1, arbitrary: fc.constant(undefined) },
      { weight: 2, arbitrary: bad },
    );
  }

  /** The route's path, `:id` from the route's generator (or a random UUID), encoded. */
  function pathOf(route: RouteSpec, hostileId: boolean): fc.Arbitrary<string> {
    if (!route.path.includes(':id')) return fc.constant(route.path);
    const id = hostileId ? urlComponent(route.id ?? hostileString).filter((s) => s.length > 0) : fc.uuid();
    return id.map((v) => route.path.replace(':id', v));
  }

  function structuredBody(route: RouteSpec): fc.Arbitrary<{ body: string; contentType: string }> {
    const shapes = route.bodies?.length ? route.bodies : [{}];
    return fc.record({
      body: fc.oneof(
        {
          weight: 10,
          arbitrary: fc
            .constantFrom(...shapes)
            .chain((fields) => mutatedBody(fields))
            .map(jsonText),
        },
        { weight: 2, arbitrary: jsonTree.map(jsonText) },
        { weight: 1, arbitrary: fc.jsonValue({ stringUnit: 'binary', maxDepth: 6 }).map((v) => JSON.stringify(v)) },
      ),
      contentType: fc.oneof(
        { weight: 6, arbitrary: fc.constant('application/json') },
        { weight: 1, arbitrary: fc.constantFrom(...JSON_CONTENT_TYPES) },
      ),
    });
  }

  const withHeaders = (headers: Record<string, string | undefined>): Record<string, string> =>
    Object.fromEntries(Object.entries(headers).filter((e): e is [string, string] => e[1] !== undefined));

  /** A route from the table, with most weight on those that take the input under test. */
  const pick = (all: RouteSpec[], favoured: (r: RouteSpec) => boolean) =>
    fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...all.filter(favoured)) }, { weight: 1, arbitrary: fc.constantFrom(...all) });

  // ----------------------------------------------------------------------------- properties

  it('answers generated JSON bodies on every route without a 5xx, a leak or a change', async (ctx) => {
    const sent = client.sent;
    baseline = await fingerprints.take();
    const arb = pick(routes, (r) => Boolean(r.bodies)).chain((route) =>
      fc
        .record({
          path: pathOf(route, false),
          body: structuredBody(route),
          auth: authorization(route, !route.endsSession),
          ua: fc.option(headerValue, { nil: undefined }),
        })
        .map(({ path, body, auth, ua }) =>
          fuzzCase(route, {
            method: route.method,
            path,
            headers: withHeaders({ 'content-type': body.contentType, authorization: auth, 'user-agent': ua }),
            body: body.body,
          }),
        ),
    );
    await fc.assert(
      fc.asyncProperty(arb, async (c) => {
        await send(c.route, c.req);
      }),
      settings(1500),
    );
    await assertStillLoggedIn();
    report(ctx, 'JSON bodies', sent);
  });

  it('answers malformed JSON, prototype poisoning and wrong content types with a 4xx on every route that reads a body', async (ctx) => {
    const sent = client.sent;
    baseline = await fingerprints.take();
    const contentType = fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(...JSON_CONTENT_TYPES) },
      { weight: 2, arbitrary: fc.constantFrom(...OTHER_CONTENT_TYPES) },
      { weight: 1, arbitrary: fc.constant(undefined) },
    );
    const arb = pick(routes, (r) => r.method !== 'GET').chain((route) =>
      // A body that cannot parse never reaches a handler, so valid tokens are safe here, logout included.
      fc
        .record({ path: pathOf(route, false), body: malformedJsonBody, contentType, auth: authorization(route, true) })
        // An empty body is no body at all, not a bad one, whatever its Content-Type.
        .filter(({ body }) => body.length > 0)
        // Fastify does not read the body of a GET, so only the others must refuse it.
        .map(({ path, body, contentType: ct, auth }) =>
          fuzzCase(
            route,
            { method: route.method, path, headers: withHeaders({ 'content-type': ct, authorization: auth }), body },
            route.method !== 'GET',
          ),
        ),
    );
    await fc.assert(
      fc.asyncProperty(arb, async (c) => {
        await send(c.route, c.req, { must4xx: c.must4xx });
      }),
      settings(1000),
    );
    await assertStillLoggedIn();
    report(ctx, 'malformed bodies', sent);
  });

  it('answers generated query strings without a 5xx, a leak or a change', async (ctx) => {
    const sent = client.sent;
    baseline = await fingerprints.take();
    const arb = pick(routes, (r) => Boolean(r.query)).chain((route) =>
      fc
        .record({ path: pathOf(route, false), query: queryString(route.query ?? {}), auth: authorization(route, !route.endsSession) })
        .map(({ path, query, auth }) => fuzzCase(route, { method: route.method, path: path + query, headers: withHeaders({ authorization: auth }) })),
    );
    await fc.assert(
      fc.asyncProperty(arb, async (c) => {
        await send(c.route, c.req);
      }),
      settings(1200),
    );
    await assertStillLoggedIn();
    report(ctx, 'query strings', sent);
  });

  it('answers generated path parameters and path junk with a 4xx and no change', async (ctx) => {
    const sent = client.sent;
    baseline = await fingerprints.take();
    const withId = routes.filter((r) => r.path.includes(':id'));
    const paramCase = fc.constantFrom(...withId).chain((route) =>
      fc.record({ path: pathOf(route, true), auth: authorization(route, true) }).map(({ path, auth }) =>
        // Only the admin's look-up of a real user may succeed; everything else names nothing.
        fuzzCase(
          route,
          { method: route.method, path, headers: withHeaders({ authorization: auth }) },
          !(route.method === 'GET' && /^\/api\/v1\/admin\/users\/[0-9a-f-]{36}\/sessions$/i.test(path)),
        ),
      ),
    );
    const junkCase = fc.constantFrom(...routes).chain((route) =>
      fc
        .record({
          path: pathOf(route, false),
          junk: fc.array(urlComponent(hostileString), { minLength: 1, maxLength: 3 }),
          auth: authorization(route, !route.endsSession),
        })
        // Junk after a route's path names no route: a 4xx too.
        .map(({ path, junk, auth }) =>
          fuzzCase(undefined, { method: route.method, path: `${path}/${junk.join('/')}`, headers: withHeaders({ authorization: auth }) }, true),
        ),
    );
    await fc.assert(
      fc.asyncProperty(fc.oneof({ weight: 3, arbitrary: paramCase }, { weight: 1, arbitrary: junkCase }), async (c) => {
        await send(c.route, c.req, { must4xx: c.must4xx });
      }),
      settings(900),
    );
    await assertStillLoggedIn();
    report(ctx, 'path parameters', sent);
  });

  it('answers garbage headers (Authorization, User-Agent, X-Forwarded-For, Content-Type...) without a 5xx, a leak or a change', async (ctx) => {
    const sent = client.sent;
    baseline = await fingerprints.take();
    const headerName = fc
      .stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}$/)
      .filter(
        (n) =>
          !/^(content-length|transfer-encoding|host|connection|upgrade|expect|te|trailer|keep-alive|proxy-connection|authorization|content-type)$/i.test(
            n,
          ),
      );
    const xff = fc.oneof(
      headerValue,
      fc
        .array(
          fc.oneof(
            fc.ipV4(),
            fc.constantFrom('::1', 'fe80::1%eth0', '[::1]:80', '999.999.999.999', 'unknown', '', ' ', '127.0.0.1\t', '0x7f.1'),
            headerValue,
          ),
          {
            minLength: 1,
            maxLength: 5,
          },
        )
        .map((a) => a.join(', ')),
    );
    const arb = fc.constantFrom(...routes).chain((route) =>
      fc
        .record({
          path: pathOf(route, false),
          body: route.bodies ? structuredBody(route).map((b) => b.body) : fc.constant(undefined),
          contentType: fc.oneof(
            { weight: 4, arbitrary: fc.constant('application/json') },
            { weight: 1, arbitrary: fc.constantFrom(...JSON_CONTENT_TYPES) },
            { weight: 1, arbitrary: headerValue.map((v) => `application/json; ${v}`) },
          ),
          auth: authorization(route, !route.endsSession),
          known: fc.record(
            {
              'user-agent': headerValue,
              'x-forwarded-for': xff,
              'x-real-ip': headerValue,
              forwarded: headerValue,
              accept: headerValue,
              'accept-language': headerValue,
              'accept-encoding': headerValue,
              origin: headerValue,
              cookie: headerValue,
              referer: headerValue,
              'x-http-method-override': fc.oneof(fc.constantFrom('DELETE', 'PUT', 'PATCH', 'GET'), headerValue),
              'if-none-match': headerValue,
              range: headerValue,
              'x-request-id': headerValue,
              'access-control-request-method': headerValue,
            },
            { requiredKeys: [] },
          ),
          // Node answers an unknown expectation with 417 before the app sees anything: rare, then.
          expect: fc.oneof({ weight: 12, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom('100-continue', 'garbage') }),
          other: fc.dictionary(headerName, headerValue, { maxKeys: 3 }),
        })
        .map(({ path, body, contentType, auth, known, expect, other }) =>
          fuzzCase(route, {
            method: route.method,
            path,
            headers: withHeaders({ ...other, ...known, expect, ...(body === undefined ? {} : { 'content-type': contentType }), authorization: auth }),
            body,
          }),
        ),
    );
    await fc.assert(
      fc.asyncProperty(arb, async (c) => {
        await send(c.route, c.req);
      }),
      settings(900),
    );
    await assertStillLoggedIn();
    report(ctx, 'headers', sent);
  });

  it('answers everything at once, on known and unknown routes and methods, without a 5xx, a leak or a change', async (ctx) => {
    const sent = client.sent;
    baseline = await fingerprints.take();
    const unknown: RouteSpec[] = [
      { method: 'GET', path: '/', auth: 'none' },
      { method: 'GET', path: '/api/v1', auth: 'none' },
      { method: 'POST', path: '/api/v1/users', auth: 'user' },
      { method: 'GET', path: '/api/v1/admin', auth: 'admin' },
      { method: 'PUT', path: '/api/v1/sessions', auth: 'user' },
      { method: 'POST', path: '/api/v1/auth/logout/', auth: 'user', endsSession: true },
      { method: 'GET', path: '/api/v2/users/me', auth: 'user' },
    ];
    const method = fc.oneof(
      { weight: 8, arbitrary: fc.constant(undefined) },
      { weight: 1, arbitrary: fc.constantFrom('HEAD', 'OPTIONS', 'TRACE', 'PATCH', 'PUT', 'DELETE', 'POST', 'GET', 'FOO', 'PROPFIND') },
    );
    const body = fc.oneof(
      { weight: 1, arbitrary: fc.constant(undefined) },
      { weight: 3, arbitrary: fc.constant('structured' as const) },
      { weight: 2, arbitrary: malformedJsonBody.map((b) => ({ raw: b })) },
    );
    const arb = fc.constantFrom(...routes, ...unknown).chain((route) =>
      fc
        .record({
          method,
          path: pathOf(route, true),
          query: queryString(route.query ?? { x: hostileString }),
          body,
          structured: structuredBody(route),
          contentType: fc.oneof(
            { weight: 5, arbitrary: fc.constant('application/json') },
            { weight: 1, arbitrary: fc.constantFrom(...JSON_CONTENT_TYPES, ...OTHER_CONTENT_TYPES) },
          ),
          validAuth: authorization(route, true),
          invalidAuth: authorization(route, false),
          ua: fc.option(headerValue, { nil: undefined }),
        })
        .map((g) => {
          const raw = typeof g.body === 'object' ? g.body.raw : undefined;
          const text = g.body === 'structured' ? g.structured.body : raw;
          const m = g.method ?? route.method;
          const target = routes.find((r) => r.method === m && r.path === route.path);
          // Logout (or an unknown route that may end sessions) only gets a valid token with a
          // body that cannot parse; another method on a known path (DELETE on a path whose GET
          // takes a real user's id) only an invalid one, unless it cannot write.
          const switched = g.method !== undefined && !['GET', 'HEAD', 'OPTIONS', 'TRACE', 'FOO', 'PROPFIND'].includes(m);
          const auth = switched || ((target ?? route).endsSession && raw === undefined) ? g.invalidAuth : g.validAuth;
          return fuzzCase(target, {
            method: m,
            path: g.path + g.query,
            headers: withHeaders({ authorization: auth, 'user-agent': g.ua, 'content-type': text === undefined ? undefined : g.contentType }),
            body: text,
          });
        }),
    );
    await fc.assert(
      fc.asyncProperty(arb, async (c) => {
        // A method the table does not know on a known path must not write either.
        await send(c.route, c.req);
      }),
      settings(1500),
    );
    await assertStillLoggedIn();
    report(ctx, 'everything at once', sent);
  });

  it('stores hostile but valid input (user agents, emails) and serves it back without a 5xx', async (ctx) => {
    // The writes here are the point: a login with a hostile User-Agent opens a session, an
    // email change with the right password changes the email. What must hold is that what was
    // stored can be read back by every route that shows it.
    const sent = client.sent;
    const owner = await registerUser(t.http);
    const ownerTokens = await login(t.http, owner);
    let currentEmail = owner.email;
    await fc.assert(
      fc.asyncProperty(headerValue, emailish, async (ua, email) => {
        const loggedIn = await client.send({
          method: 'POST',
          path: '/api/v1/auth/login',
          headers: { 'content-type': 'application/json', 'user-agent': ua },
          body: JSON.stringify({ email: currentEmail, password: owner.password }),
        });
        assert.ok([200, 431].includes(loggedIn.status), `login with User-Agent ${JSON.stringify(ua.slice(0, 200))}: ${describeResponse(loggedIn)}`);
        const tokens = loggedIn.status === 200 ? (JSON.parse(loggedIn.text) as Tokens) : ownerTokens;
        const patched = await client.send({
          method: 'PATCH',
          path: '/api/v1/users/me',
          headers: { 'content-type': 'application/json', authorization: bearer(tokens) },
          body: JSON.stringify({ email, currentPassword: owner.password }),
        });
        assert.ok(patched.status < 500, `PATCH email ${JSON.stringify(email)}: ${describeResponse(patched)}`);
        if (patched.status === 200) currentEmail = (JSON.parse(patched.text) as { email: string }).email;
        for (const [path, who] of [
          ['/api/v1/sessions', tokens],
          ['/api/v1/users/me', tokens],
          ['/api/v1/audit?limit=100', tokens],
          [`/api/v1/admin/users/${owner.id}/sessions`, adminTokens],
          [`/api/v1/admin/audit?userId=${owner.id}&limit=100`, adminTokens],
        ] as const) {
          const res = await client.send({ method: 'GET', path, headers: { authorization: bearer(who) } });
          assert.equal(
            res.status,
            200,
            `GET ${path} after storing User-Agent ${JSON.stringify(ua.slice(0, 200))} and email ${JSON.stringify(email)}: ${describeResponse(res)}`,
          );
          assert.ok(!/\$2[abxy]\$|QueryFailedError|node_modules/.test(res.text), `GET ${path} leaks: ${describeResponse(res)}`);
        }
        if (loggedIn.status === 200) {
          const out = await client.send({ method: 'POST', path: '/api/v1/auth/logout', headers: { authorization: bearer(tokens) } });
          assert.equal(out.status, 204, describeResponse(out));
        }
      }),
      settings(150),
    );
    report(ctx, 'stored input', sent);
  });

  // --------------------------------------------------------------------- targeted examples

  describe('targeted examples', () => {
    const json = { 'content-type': 'application/json' };

    async function refused(route: RouteSpec | undefined, req: FuzzRequest, expected?: number | number[]): Promise<FuzzResponse> {
      baseline = await fingerprints.take();
      const res = await send(route, req, { must4xx: true });
      if (expected !== undefined) {
        const allowed = Array.isArray(expected) ? expected : [expected];
        assert.ok(
          allowed.includes(res.status),
          `expected ${allowed.join(' or ')}, got ${res.status}\n  request:  ${describeRequest(req)}\n  response: ${describeResponse(res)}`,
        );
      }
      return res;
    }

    const route = (method: string, path: string) => routes.find((r) => r.method === method && r.path === path)!;

    it('refuses JSON nested 10 000 levels deep (unclosed) and 8 192 levels deep (the most that fits in 16 KiB) with a 400', async () => {
      const register = route('POST', '/api/v1/auth/register');
      for (const body of [
        '['.repeat(10_000),
        `${'['.repeat(8192)}${']'.repeat(8192)}`,
        `{"username":${'['.repeat(5000)}${']'.repeat(5000)},"email":"a@b.test","password":"a-long-enough-password"}`,
        `${'{"a":'.repeat(2000)}1${'}'.repeat(2000)}`,
      ]) {
        assert.ok(Buffer.byteLength(body) <= 16 * 1024);
        for (const r of [register, route('POST', '/api/v1/auth/login'), route('PATCH', '/api/v1/users/me')]) {
          await refused(r, { method: r.method, path: r.path, headers: { ...json, authorization: bearer(userTokens) }, body }, 400);
        }
      }
      // The deep bodies cannot have ended the session either (logout never saw them).
      const logout = route('POST', '/api/v1/auth/logout');
      await refused(
        logout,
        {
          method: 'POST',
          path: logout.path,
          headers: { ...json, authorization: bearer(userTokens) },
          body: `${'['.repeat(8192)}${']'.repeat(8192)}`,
        },
        400,
      );
      await assertStillLoggedIn();
    });

    it('refuses prototype pollution on register with a 400, creates no user and pollutes nothing', async () => {
      const register = route('POST', '/api/v1/auth/register');
      const input = newUserInput();
      const fields = `"username":${JSON.stringify(input.username)},"email":${JSON.stringify(input.email)},"password":${JSON.stringify(input.password)}`;
      for (const body of [
        '{"__proto__": {"role": "admin"}}',
        `{${fields},"__proto__":{"role":"admin"}}`,
        `{${fields},"constructor":{"prototype":{"role":"admin"}}}`,
        `{${fields},"role":"admin"}`,
        `{"username":{"__proto__":{"role":"admin"}},"email":${JSON.stringify(input.email)},"password":${JSON.stringify(input.password)}}`,
      ]) {
        await refused(register, { method: 'POST', path: register.path, headers: json, body }, 400);
        assert.equal(({} as Record<string, unknown>).role, undefined, 'Object.prototype was polluted');
      }
      const [{ count }] = await t.db.query(`SELECT count(*)::int AS count FROM users WHERE role = 'admin'`);
      assert.equal(count, 1);
    });

    it('refuses a 17 KiB body with 413 on every route that reads a body', async () => {
      for (const r of bodyRoutes()) {
        const body = JSON.stringify({ username: 'x'.repeat(17 * 1024) });
        const auth: Record<string, string> = r.endsSession ? {} : { authorization: bearer(r.auth === 'admin' ? adminTokens : userTokens) };
        await refused(
          r,
          { method: r.method, path: r.path.replace(':id', '00000000-0000-0000-0000-000000000000'), headers: { ...json, ...auth }, body },
          413,
        );
      }
      await assertStillLoggedIn();
    });

    it('refuses Content-Type text/plain (and other non-JSON types) with 415 on every route that reads a body', async () => {
      for (const r of [...bodyRoutes(), route('POST', '/api/v1/auth/logout')]) {
        for (const contentType of ['text/plain', 'application/x-www-form-urlencoded', 'application/xml']) {
          const body = contentType === 'text/plain' ? JSON.stringify({ refreshToken: 'x' }) : 'refreshToken=x';
          const path = r.path.replace(':id', '00000000-0000-0000-0000-000000000000');
          await refused(r, { method: r.method, path, headers: { 'content-type': contentType, authorization: bearer(userTokens) }, body }, 415);
        }
      }
      await assertStillLoggedIn();
    });

    it('refuses a NUL byte in every identifier, token, query and path field with a 400', async () => {
      const nul = (s: string) => `${s.slice(0, 3)}\u0000${s.slice(3)}`;
      const valid = newUserInput();
      const cases: Array<[string, string, Record<string, string>, number]> = [
        ['POST', '/api/v1/auth/register', { ...valid, username: nul(valid.username) }, 400],
        ['POST', '/api/v1/auth/register', { ...valid, email: nul(valid.email) }, 400],
        ['POST', '/api/v1/auth/login', { email: nul(user.email), password: user.password }, 400],
        ['POST', '/api/v1/auth/login', { username: nul(user.username), password: user.password }, 400],
        // A refresh token is opaque: one with a NUL is simply not one we issued.
        ['POST', '/api/v1/auth/refresh', { refreshToken: nul(userTokens.refreshToken) }, 401],
        ['PATCH', '/api/v1/users/me', { username: nul(user.username) }, 400],
        ['PATCH', '/api/v1/users/me', { email: nul(user.email), currentPassword: user.password }, 400],
      ];
      for (const [method, path, body, status] of cases) {
        await refused(
          route(method, path),
          { method, path, headers: { ...json, authorization: bearer(userTokens) }, body: JSON.stringify(body) },
          status,
        );
      }
      for (const query of ['type=LOGIN%00', 'from=2026-01-01%00', 'to=%002026-01-01', 'limit=1%00', `cursor=${percentEncode(nul('YTEuMQ'))}`]) {
        await refused(
          route('GET', '/api/v1/audit'),
          { method: 'GET', path: `/api/v1/audit?${query}`, headers: { authorization: bearer(userTokens) } },
          400,
        );
        await refused(
          route('GET', '/api/v1/admin/audit'),
          { method: 'GET', path: `/api/v1/admin/audit?${query}`, headers: { authorization: bearer(adminTokens) } },
          400,
        );
      }
      await refused(
        route('GET', '/api/v1/admin/audit'),
        { method: 'GET', path: `/api/v1/admin/audit?userId=${percentEncode(nul(user.id))}`, headers: { authorization: bearer(adminTokens) } },
        400,
      );
      for (const r of routes.filter((x) => x.path.includes(':id') && !x.writesOn2xx)) {
        const auth = bearer(r.auth === 'admin' ? adminTokens : userTokens);
        await refused(
          r,
          { method: r.method, path: r.path.replace(':id', percentEncode(nul(victimTokens.sessionId))), headers: { authorization: auth } },
          400,
        );
      }
      // A password is any sequence of characters (API.md), so a NUL in one that is only
      // checked is a wrong password: 401, and for login the usual audited failure.
      const someone = await registerUser(t.http); // not locked out by the properties' failed logins
      const wrong = JSON.stringify({ email: someone.email, password: nul(someone.password) });
      await refused(route('POST', '/api/v1/auth/login'), { method: 'POST', path: '/api/v1/auth/login', headers: json, body: wrong }, 401);
      const someoneTokens = await login(t.http, someone);
      await refused(
        route('PUT', '/api/v1/users/me/password'),
        {
          method: 'PUT',
          path: '/api/v1/users/me/password',
          headers: { ...json, authorization: bearer(someoneTokens) },
          body: JSON.stringify({ currentPassword: nul(someone.password), newPassword: nul('a-long-enough-new-password') }),
        },
        401,
      );
      await assertStillLoggedIn();
    });

    it('keeps a NUL byte in a new password, as any other character, and verifies it exactly', async () => {
      // API.md: "password 12–128 characters, any composition, verified exactly as received".
      // A NUL is a character; bcrypt only ever sees the HMAC of it, so nothing truncates there.
      const password = 'before\u0000after-the-nul';
      const created = await registerUser(t.http, { password });
      await login(t.http, created);
      const truncated = await client.send({
        method: 'POST',
        path: '/api/v1/auth/login',
        headers: json,
        body: JSON.stringify({ email: created.email, password: 'before' }),
      });
      assert.equal(truncated.status, 401);
    });

    it('refuses NUL bytes and other control characters in the request line and headers with a 400, and keeps answering', async () => {
      for (const raw of [
        'GET /health/live HTTP/1.1\r\nHost: x\r\nUser-Agent: a\u0000b\r\n\r\n',
        'GET /api/v1/users/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \u0000\r\n\r\n',
        'GET /api/v1/sessions/\u0000 HTTP/1.1\r\nHost: x\r\n\r\n',
        'GET /health/live HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n',
        'POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}',
        'GET /health/live HTTP/1.1\r\n\r\n',
      ]) {
        baseline = await fingerprints.take();
        const answer = await rawExchange(client.port, Buffer.from(raw, 'latin1'));
        const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(answer)?.[1]);
        assert.ok(status >= 400 && status < 500, `${JSON.stringify(raw)} -> ${JSON.stringify(answer.slice(0, 300))}`);
        assert.deepEqual(diffFingerprints(baseline, await fingerprints.take()), []);
      }
      assert.equal((await client.send({ method: 'GET', path: '/health/live', headers: {} })).status, 200);
    });

    it('refuses a 20 KiB header value with 431 (or 400) and answers the next request', async () => {
      for (const name of ['user-agent', 'authorization', 'x-forwarded-for', 'cookie']) {
        const value = name === 'authorization' ? `Bearer ${'a'.repeat(20 * 1024)}` : 'a'.repeat(20 * 1024);
        await refused(
          undefined,
          { method: 'GET', path: '/api/v1/users/me', headers: { authorization: bearer(userTokens), [name]: value } },
          [400, 431],
        );
        const next = await client.send({ method: 'GET', path: '/api/v1/users/me', headers: { authorization: bearer(userTokens) } });
        assert.equal(next.status, 200, describeResponse(next));
      }
      const raw = await rawExchange(client.port, `GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20 * 1024)}\r\n\r\n`);
      assert.match(raw, /^HTTP\/1\.1 (431|400) /);
      assert.equal((await client.send({ method: 'GET', path: '/health/live', headers: {} })).status, 200);
    });

    it('answers 400 for an email with a lone surrogate (found by fuzzing)', async () => {
      // validator's isEmail measures the parts with encodeURI, which throws URIError on a lone
      // surrogate; class-validator lets it escape, so the ValidationPipe answers 500.
      const someone = newUserInput();
      for (const email of ['\uDFFF', 'aaa@\uD800', '\uD800@example.test', `${someone.username}@example.te\uDC00st`]) {
        await refused(
          route('POST', '/api/v1/auth/register'),
          { method: 'POST', path: '/api/v1/auth/register', headers: json, body: JSON.stringify({ ...someone, email }) },
          400,
        );
        await refused(
          route('POST', '/api/v1/auth/login'),
          { method: 'POST', path: '/api/v1/auth/login', headers: json, body: JSON.stringify({ email, password: 'whatever-it-is' }) },
          400,
        );
        await refused(
          route('PATCH', '/api/v1/users/me'),
          {
            method: 'PATCH',
            path: '/api/v1/users/me',
            headers: { ...json, authorization: bearer(userTokens) },
            body: JSON.stringify({ email, currentPassword: 'not-the-password' }),
          },
          400,
        );
      }
    });

    it('answers 400 for null in an optional profile field (found by fuzzing)', async () => {
      // @IsOptional() skips every other rule for null as well as for a missing field, and
      // updateProfile only tests `!== undefined`: null reaches `UPDATE users SET username = NULL`
      // (a NOT NULL violation) or `null.toLowerCase()`. A null currentPassword is counted as a
      // failed attempt in login_throttle before it crashes the HMAC: a write for bad input.
      const patch = route('PATCH', '/api/v1/users/me');
      for (const body of [
        { username: null },
        { email: null },
        { email: 'someone-new@example.test', currentPassword: null },
        { username: null, email: null, currentPassword: null },
      ]) {
        await refused(
          patch,
          { method: 'PATCH', path: patch.path, headers: { ...json, authorization: bearer(userTokens) }, body: JSON.stringify(body) },
          400,
        );
      }
    });

    it('answers 400 for ISO-8601 forms the validator accepts but a Date cannot hold (found by fuzzing)', async () => {
      // class-validator's IsISO8601 (strict) accepts week dates, ordinal dates, the basic
      // format, comma fractions and signed four-digit years; `new Date()` makes an Invalid
      // Date of them, which reaches PostgreSQL as a parameter ("NaN-NaN-NaN...": 500). Each
      // must be a 400 naming the field, as any bad filter.
      for (const value of [
        '2021-W01',
        '2021-W01-1',
        '20210101',
        '2020-366',
        '2021-01-01T00:00:00,5Z',
        '2021-01-01T000000Z',
        '+2021-01-01T00:00:00Z',
      ]) {
        for (const field of ['from', 'to']) {
          for (const [path, tokens] of [
            ['/api/v1/audit', userTokens],
            ['/api/v1/admin/audit', adminTokens],
          ] as const) {
            const r = route('GET', path);
            const res = await refused(
              r,
              { method: 'GET', path: `${path}?${field}=${percentEncode(value)}`, headers: { authorization: bearer(tokens) } },
              400,
            );
            assert.match(res.text, new RegExp(field));
          }
        }
      }
    });
  });

  // The oracle digests again only the tables its triggers saw written (test/helpers/fuzz-db.ts):
  // after thousands of requests, its picture must still be the one every table gives now.
  it("kept the oracle's picture of the database exact through the run", async () => {
    assert.deepEqual(await fingerprints.take(), await fingerprints.takeWhole());
  });

  after(() => {
    const lines = [...statuses.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(
        ([key, counts]) =>
          `  ${key}: ${[...counts.entries()]
            .sort(([a], [b]) => a - b)
            .map(([s, n]) => `${s}×${n}`)
            .join(' ')}`,
      );
    // Printed after the run: which answers each route gave, so a fuzzer that only ever meets
    // the guard (401 everywhere) is visible.
    console.log(`fuzz: ${client?.sent ?? 0} requests, ${writes2xx} writing 2xx, seed ${SEED}\n${lines.join('\n')}`);
  });
});
