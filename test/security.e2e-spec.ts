import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, generateKeyPairSync, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import * as jwt from 'jsonwebtoken';
import { createLogger } from '../src/config/logger';
import { CapturingLogger } from './helpers/capturing-logger';
import { bearer, login, registerAndLogin, registerUser } from './helpers/factories';
import { FuzzClient, rawExchange } from './helpers/fuzz-http';
import { createTestApp, freshDatabase, TestApp } from './helpers/test-app';

describe('HTTP hygiene (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ CORS_ORIGINS: 'https://app.example.com' });
  });
  after(async () => {
    await t.close();
  });

  it('sends the REST security headers on every JSON answer, errors included, and no X-Powered-By', async () => {
    const answers = [
      await t.http.get('/health/live'),
      await t.http.get('/no-such-route'),
      await t.http.get('/api/v1/users/me'),
      await t.http.post('/api/v1/auth/login').set('content-type', 'text/plain').send('x'),
      await t.http
        .post('/api/v1/auth/login')
        .set('content-type', 'application/json')
        .send(JSON.stringify({ pad: 'x'.repeat(20_000) })),
    ];
    assert.deepEqual(
      answers.map((res) => res.status),
      [200, 404, 401, 415, 413],
    );
    for (const [i, res] of answers.entries()) {
      const what = `answer ${i} (${res.status})`;
      // OWASP REST Security Cheat Sheet: a JSON answer loads nothing and is never framed.
      assert.equal(res.headers['content-security-policy'], "default-src 'none';frame-ancestors 'none'", what);
      assert.equal(res.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains', what);
      assert.equal(res.headers['x-content-type-options'], 'nosniff', what);
      assert.equal(res.headers['x-frame-options'], 'DENY', what);
      assert.equal(res.headers['referrer-policy'], 'no-referrer', what);
      assert.equal(res.headers['cross-origin-resource-policy'], 'same-origin', what);
      assert.equal(res.headers['x-powered-by'], undefined, what);
      // Helmet's page-only headers are not sent with JSON.
      for (const pageOnly of [
        'x-xss-protection',
        'x-download-options',
        'origin-agent-cluster',
        'x-dns-prefetch-control',
        'x-permitted-cross-domain-policies',
      ]) {
        assert.equal(res.headers[pageOnly], undefined, `${what}: ${pageOnly}`);
      }
    }
  });

  it('answers what Node and Fastify refuse before routing in our shape: headers, JSON charset, error body', async () => {
    const client = await FuzzClient.listen(t.app.getHttpServer());
    try {
      const cases: Array<[string, string, number]> = [
        ['a malformed request line', 'GET /health/live HTTP/1.1 junk\r\nHost: x\r\n\r\n', 400],
        ['headers over the size limit', `GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20 * 1024)}\r\n\r\n`, 431],
        ['a URL that does not decode', 'GET /api/v1/sessions/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 400],
        [
          'a path parameter over the router limit',
          `DELETE /api/v1/sessions/${'a'.repeat(200)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
          414,
        ],
      ];
      for (const [what, raw, status] of cases) {
        const answer = await rawExchange(client.port, raw);
        const [head, body] = answer.split('\r\n\r\n');
        assert.match(head, new RegExp(`^HTTP/1\\.1 ${status} `), `${what}: ${answer.slice(0, 200)}`);
        assert.match(head, /\r\ncontent-type: application\/json; charset=utf-8\r\n/i, what);
        assert.match(head, /\r\nx-content-type-options: nosniff\r\n/i, what);
        assert.match(head, /\r\ncontent-security-policy: default-src 'none';frame-ancestors 'none'\r\n/i, what);
        const parsed = JSON.parse(body) as Record<string, unknown>;
        assert.deepEqual(Object.keys(parsed).sort(), ['error', 'message', 'statusCode'], what);
        assert.equal(parsed.statusCode, status, what);
        assert.ok(
          !JSON.stringify(parsed).includes('aaaa') && !JSON.stringify(parsed).includes('%zz'),
          `${what}: the answer echoes no part of the request`,
        );
      }
      // The server goes on answering.
      assert.equal((await client.send({ method: 'GET', path: '/health/live', headers: {} })).status, 200);
    } finally {
      client.close();
    }
  });

  it('challenges a refused bearer per RFC 6750, on bearer-protected routes only', async () => {
    const none = await t.http.get('/api/v1/users/me');
    assert.equal(none.status, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer');
    const forged = await t.http.get('/api/v1/users/me').set('Authorization', 'Bearer a.b.c');
    assert.equal(forged.status, 401);
    assert.equal(forged.headers['www-authenticate'], 'Bearer error="invalid_token"');
    const { tokens } = await registerAndLogin(t.http);
    await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens)).expect(204);
    const ended = await t.http.get('/api/v1/auth/session').set('Authorization', bearer(tokens));
    assert.equal(ended.status, 401);
    assert.equal(ended.headers['www-authenticate'], 'Bearer error="invalid_token"');
    // Every 401 carries a challenge (RFC 9110, API.md): refused credentials in the body (a wrong
    // password, an unknown refresh token) get the bare scheme, which names no fault of a token.
    const user = await registerUser(t.http);
    const wrong = await t.http.post('/api/v1/auth/login').send({ email: user.email, password: `${user.password}x` });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers['www-authenticate'], 'Bearer');
    const unknown = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: 'x'.repeat(43) });
    assert.equal(unknown.status, 401);
    assert.equal(unknown.headers['www-authenticate'], 'Bearer');
  });

  it("sends helmet 8's full set on the Swagger UI, with a CSP that admits the UI", async () => {
    const res = await t.http.get('/docs');
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'], /text\/html/);
    assert.equal(
      res.headers['content-security-policy'],
      "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';frame-ancestors 'none';img-src 'self' data:;" +
        // No upgrade-insecure-requests on a page served over plain HTTP: it would blank the UI.
        "object-src 'none';script-src 'self' 'unsafe-inline';script-src-attr 'none';style-src 'self' 'unsafe-inline'",
    );
    assert.equal(res.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains');
    assert.equal(res.headers['x-content-type-options'], 'nosniff');
    assert.equal(res.headers['x-frame-options'], 'SAMEORIGIN');
    assert.equal(res.headers['referrer-policy'], 'no-referrer');
    // Over plain HTTP the browser ignores COOP (and complains in the console): not sent.
    assert.equal(res.headers['cross-origin-opener-policy'], undefined);
    assert.equal(res.headers['cross-origin-resource-policy'], 'same-origin');
    assert.equal(res.headers['origin-agent-cluster'], '?1');
    assert.equal(res.headers['x-dns-prefetch-control'], 'off');
    assert.equal(res.headers['x-download-options'], 'noopen');
    assert.equal(res.headers['x-permitted-cross-domain-policies'], 'none');
    assert.equal(res.headers['x-xss-protection'], '0');
    assert.equal(res.headers['x-powered-by'], undefined);
  });

  it("asks the browser to upgrade the UI's requests, and isolates its window, only when the page came over HTTPS (a believed proxy says so)", async () => {
    // Ignored without TRUST_PROXY: a client cannot claim HTTPS for itself.
    const claimed = await t.http.get('/docs').set('X-Forwarded-Proto', 'https');
    assert.doesNotMatch(claimed.headers['content-security-policy'], /upgrade-insecure-requests/);
    const proxied = await createTestApp({ TRUST_PROXY: '127.0.0.1', JWT_SECRET: t.config.JWT_SECRET, PASSWORD_PEPPER: t.config.PASSWORD_PEPPER });
    try {
      const secure = await proxied.http.get('/docs').set('X-Forwarded-Proto', 'https');
      assert.match(secure.headers['content-security-policy'], /;upgrade-insecure-requests$/);
      assert.equal(secure.headers['cross-origin-opener-policy'], 'same-origin');
      const plain = await proxied.http.get('/docs').set('X-Forwarded-Proto', 'http');
      assert.doesNotMatch(plain.headers['content-security-policy'], /upgrade-insecure-requests/);
      assert.equal(plain.headers['cross-origin-opener-policy'], undefined);
      // API answers are the same either way.
      assert.equal(
        (await proxied.http.get('/health/live').set('X-Forwarded-Proto', 'https')).headers['content-security-policy'],
        "default-src 'none';frame-ancestors 'none'",
      );
    } finally {
      await proxied.close();
    }
  });

  it('marks token responses, and every other API answer, Cache-Control: no-store; the JWKS keeps its max-age', async () => {
    const user = await registerUser(t.http);
    const res = await t.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password });
    assert.equal(res.headers['cache-control'], 'no-store');
    const refreshed = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: res.body.refreshToken });
    assert.equal(refreshed.headers['cache-control'], 'no-store');
    // Personal data (a profile, sessions with their addresses, audit events), errors and 404s alike (until 0.24.2, none said so).
    const auth = `Bearer ${refreshed.body.accessToken}`;
    for (const path of ['/api/v1/users/me', '/api/v1/sessions', '/api/v1/audit', '/api/v1/no-such-route', '/health/live']) {
      const answer = await t.http.get(path).set('Authorization', auth);
      assert.equal(answer.headers['cache-control'], 'no-store', `${path}: ${answer.status}`);
    }
    assert.equal((await t.http.get('/api/v1/users/me')).headers['cache-control'], 'no-store', 'a 401 too');
    assert.match((await t.http.get('/.well-known/jwks.json')).headers['cache-control'], /^public, max-age=\d+$/);
  });

  it('answers CORS only for listed origins', async () => {
    const allowed = await t.http.options('/api/v1/auth/login').set('Origin', 'https://app.example.com').set('Access-Control-Request-Method', 'POST');
    assert.equal(allowed.headers['access-control-allow-origin'], 'https://app.example.com');
    const foreign = await t.http.options('/api/v1/auth/login').set('Origin', 'https://evil.example').set('Access-Control-Request-Method', 'POST');
    assert.equal(foreign.headers['access-control-allow-origin'], undefined);
    const simple = await t.http.get('/health/live').set('Origin', 'https://evil.example');
    assert.equal(simple.headers['access-control-allow-origin'], undefined);
    // A listed origin gets it on every answer, refusals included, even those Fastify gives before
    // the route (openapi.json documents it on every response).
    const answers = await Promise.all(
      [
        t.http.get('/health/live'),
        t.http.get('/api/v1/users/me'),
        t.http.post('/api/v1/auth/login').set('Content-Type', 'application/xml').send('<login/>'),
      ].map((req) => req.set('Origin', 'https://app.example.com')),
    );
    assert.deepEqual(
      answers.map((res) => res.status),
      [200, 401, 415],
    );
    for (const res of answers) assert.equal(res.headers['access-control-allow-origin'], 'https://app.example.com', String(res.status));
    // A browser's script can read the limit's headers, and a step-up's challenge, only when they are exposed.
    assert.deepEqual(
      String(answers[1].headers['access-control-expose-headers'])
        .split(',')
        .map((h) => h.trim().toLowerCase())
        .sort(),
      ['retry-after', 'www-authenticate', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset'],
    );
  });

  it('with no CORS_ORIGINS, answers no origin at all: no CORS header, preflight 404 like an unknown route', async () => {
    const closed = await createTestApp({ CORS_ORIGINS: '' });
    try {
      const preflight = await closed.http
        .options('/api/v1/auth/login')
        .set('Origin', 'https://app.example.com')
        .set('Access-Control-Request-Method', 'POST');
      assert.equal(preflight.status, 404);
      const simple = await closed.http.get('/health/live').set('Origin', 'https://app.example.com');
      assert.equal(simple.status, 200);
      for (const res of [preflight, simple]) {
        assert.deepEqual(
          Object.keys(res.headers).filter((h) => h.startsWith('access-control-')),
          [],
        );
      }
    } finally {
      await closed.close();
    }
  });

  it('refuses TRACE without echoing the request', async () => {
    const res = await t.http.trace('/api/v1/users/me').set('Authorization', 'Bearer secret-looking-value');
    assert.ok(res.status >= 400 && res.status < 500, String(res.status));
    assert.ok(!res.text.includes('secret-looking-value'));
  });

  it('refuses over-deep JSON, prototype poisoning and wrong content types with a 4xx, changing nothing', async () => {
    const [{ before }] = await t.db.query('SELECT count(*)::int AS before FROM users');
    const deep = '{"username":' + '['.repeat(5000) + ']'.repeat(5000) + '}';
    const deepRes = await t.http.post('/api/v1/auth/register').set('Content-Type', 'application/json').send(deep);
    assert.equal(deepRes.status, 400);
    const nested = {
      username: 'abc',
      email: 'a@b.test',
      password: 'x'.repeat(20),
      extra: { a: { b: { c: { d: { e: { f: { g: { h: {} } } } } } } } },
    };
    assert.equal((await t.http.post('/api/v1/auth/register').send(nested)).status, 400);
    const poisoned = await t.http
      .post('/api/v1/auth/register')
      .set('Content-Type', 'application/json')
      .send('{"username":"pp_user","email":"pp@x.test","password":"long-enough-password","__proto__":{"role":"admin"}}');
    assert.equal(poisoned.status, 400);
    const text = await t.http.post('/api/v1/auth/login').set('Content-Type', 'text/plain').send('email=a&password=b');
    assert.equal(text.status, 415);
    const form = await t.http.post('/api/v1/auth/login').type('form').send({ email: 'a@b.test', password: 'x' });
    assert.equal(form.status, 415);
    const [{ after: count }] = await t.db.query('SELECT count(*)::int AS after FROM users');
    assert.equal(count, before);
  });

  it('refuses malformed Unicode and nulls in JSON with a 400, changing nothing', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    const raw = (body: string) => t.http.post('/api/v1/auth/register').set('Content-Type', 'application/json').send(body);
    assert.equal((await raw('{"username":"lone_sur","email":"ls@x.test","password":"pass-\\ud800-word-long"}')).status, 400);
    assert.equal((await raw('{"username":"lone_sur","email":"\\ud800@x.test","password":"a-long-enough-password"}')).status, 400);
    for (const body of [{ username: null }, { email: null }, { email: `n_${user.email}`, currentPassword: null }, { currentPassword: null }]) {
      const res = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send(body);
      assert.equal(res.status, 400, JSON.stringify(body));
    }
    const [row] = await t.db.query('SELECT username, email FROM users WHERE id = $1', [user.id]);
    assert.deepEqual(row, { username: user.username, email: user.email });
    const [{ count }] = await t.db.query(`SELECT count(*)::int AS count FROM users WHERE username = 'lone_sur'`);
    assert.equal(count, 0);
  });

  it('refuses an oversized header without harm: the next request is served', async () => {
    const res = await t.http
      .get('/health/live')
      .set('X-Padding', 'x'.repeat(20 * 1024))
      .catch((e: { status?: number }) => e);
    assert.ok((res as { status?: number }).status === 431 || (res as { status?: number }).status === 400, JSON.stringify(res));
    assert.equal((await t.http.get('/health/live')).status, 200);
  });
});

describe('access tokens are only what we issued (e2e)', () => {
  let t: TestApp;
  let tokens: Awaited<ReturnType<typeof login>>;
  let userId: string;
  let kid: string;
  before(async () => {
    // HS256 keyed by JWT_SECRET: the test holds the service's own signing key, so each case
    // below differs from a token the service would accept in one respect only.
    // Its own database: the file's already holds the ES256 ring an earlier app made.
    t = await createTestApp({ SIGNING_ALGORITHM: 'HS256', DATABASE_URL: await freshDatabase() });
    const session = await registerAndLogin(t.http);
    tokens = session.tokens;
    userId = session.user.id;
    kid = JSON.parse(Buffer.from(tokens.accessToken.split('.')[0], 'base64url').toString('utf8')).kid;
  });
  after(async () => {
    await t.close();
  });

  const claims = () => ({ sub: userId, sid: tokens.sessionId, jti: randomUUID(), iss: 'sessionary', aud: 'sessionary-api' });
  const status = async (token: string) => (await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${token}`)).status;

  it('accepts a token signed with our key and our claims (the control for the cases below)', async () => {
    const token = jwt.sign(claims(), t.config.JWT_SECRET, { algorithm: 'HS256', expiresIn: 60, header: { alg: 'HS256', typ: 'at+jwt', kid } });
    assert.equal(await status(token), 200);
  });

  it('refuses key-selection header tricks even when the signature is ours', async () => {
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const tricks: Array<Record<string, unknown>> = [
      { kid: '../../../../dev/null' },
      { jku: 'https://attacker.example/jwks.json' },
      { jwk: publicKey.export({ format: 'jwk' }) },
      { x5u: 'https://attacker.example/cert.pem' },
      { x5c: ['MIIB'] },
      { crit: ['exp'] },
      { kid: 42 },
    ];
    for (const extra of tricks) {
      const token = jwt.sign(claims(), t.config.JWT_SECRET, {
        algorithm: 'HS256',
        expiresIn: 60,
        header: { alg: 'HS256', typ: 'at+jwt', kid, ...extra } as jwt.JwtHeader,
      });
      assert.equal(await status(token), 401, JSON.stringify(extra).slice(0, 60));
    }
  });

  it('refuses other algorithms, foreign keys, wrong issuer or audience, expired and untyped tokens', async () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const secret = t.config.JWT_SECRET;
    const header = { alg: 'HS256', typ: 'at+jwt', kid } as jwt.JwtHeader;
    const cases: Array<[string, string]> = [
      [
        'RS256 with a foreign key',
        jwt.sign(claims(), privateKey, { algorithm: 'RS256', expiresIn: 60, header: { alg: 'RS256', typ: 'at+jwt', kid } }),
      ],
      ['HS512 with our key', jwt.sign(claims(), secret, { algorithm: 'HS512', expiresIn: 60, header: { alg: 'HS512', typ: 'at+jwt', kid } })],
      ['HS256 with another key', jwt.sign(claims(), 'another-secret-another-secret-another', { algorithm: 'HS256', expiresIn: 60, header })],
      ['wrong issuer', jwt.sign({ ...claims(), iss: 'someone-else' }, secret, { algorithm: 'HS256', expiresIn: 60, header })],
      ['wrong audience', jwt.sign({ ...claims(), aud: 'another-api' }, secret, { algorithm: 'HS256', expiresIn: 60, header })],
      ['expired', jwt.sign({ ...claims(), exp: Math.floor(Date.now() / 1000) - 10 }, secret, { algorithm: 'HS256', header })],
      ['no exp', jwt.sign(claims(), secret, { algorithm: 'HS256', header })],
      ['typ JWT', jwt.sign(claims(), secret, { algorithm: 'HS256', expiresIn: 60, header: { alg: 'HS256', typ: 'JWT', kid } })],
      [
        'alg none',
        `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'at+jwt', kid })).toString('base64url')}.${Buffer.from(JSON.stringify({ ...claims(), exp: 9e9 })).toString('base64url')}.`,
      ],
      ['another session id', jwt.sign({ ...claims(), sid: randomUUID() }, secret, { algorithm: 'HS256', expiresIn: 60, header })],
      ['another user for this session', jwt.sign({ ...claims(), sub: randomUUID() }, secret, { algorithm: 'HS256', expiresIn: 60, header })],
    ];
    for (const [name, token] of cases) assert.equal(await status(token), 401, name);
  });

  it('never takes a refresh token as an access token or the reverse', async () => {
    assert.equal(await status(tokens.refreshToken), 401);
    const res = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.accessToken });
    assert.equal(res.status, 401);
  });

  it('takes tokens only from Authorization: Bearer', async () => {
    assert.equal((await t.http.get(`/api/v1/users/me?access_token=${tokens.accessToken}`)).status, 401);
    assert.equal((await t.http.get('/api/v1/users/me').set('Cookie', `access_token=${tokens.accessToken}`)).status, 401);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', `Basic ${tokens.accessToken}`)).status, 401);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${tokens.accessToken} trailing`)).status, 401);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', `Bearer  ${tokens.accessToken}`)).status, 401);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${tokens.accessToken}`)).status, 200);
  });
});

describe('TRUST_PROXY: a hop count higher than the proxies a request came through (e2e)', () => {
  it('warns once, at the first request with fewer X-Forwarded-For addresses than the count, whose address the client may have written', async () => {
    const logger = new CapturingLogger();
    const t = await createTestApp({ TRUST_PROXY: '2' }, { logger });
    try {
      const user = await registerUser(t.http);
      const warnings = () => logger.of('TrustProxy');
      // Straight to the port (a health probe), or through both proxies: nothing to say.
      assert.equal((await t.http.get('/health/live')).status, 200);
      const proxied = await t.http
        .post('/api/v1/auth/login')
        .set('X-Forwarded-For', '203.0.113.9, 10.0.0.7')
        .send({ email: user.email, password: user.password });
      assert.equal(proxied.status, 200);
      assert.deepEqual(warnings(), []);
      // Through one: the client's own entry is believed as its address.
      const short = await t.http
        .post('/api/v1/auth/login')
        .set('X-Forwarded-For', '198.51.100.77')
        .send({ email: user.email, password: user.password });
      assert.equal(short.status, 200);
      const [session] = (await t.http.get('/api/v1/sessions').set('Authorization', bearer(short.body))).body.filter(
        (s: { current: boolean }) => s.current,
      );
      assert.equal(session.ipAddress, '198.51.100.77', 'the single entry became the client address');
      assert.equal(warnings().length, 1, JSON.stringify(warnings()));
      assert.equal(warnings()[0].level, 'warn');
      assert.match(warnings()[0].message, /^TRUST_PROXY=2 trusts 2 proxies, but a request came with 1 X-Forwarded-For address: /);
      assert.doesNotMatch(warnings()[0].message, /198\.51\.100\.77/, 'no client address in the line');
      // Said once per process.
      await t.http.get('/health/live').set('X-Forwarded-For', '198.51.100.78');
      assert.equal(warnings().length, 1);
    } finally {
      await t.close();
    }
  });
});

describe('logs (e2e)', () => {
  it('are one JSON event a line and never carry a password, token, token hash or Authorization header', async () => {
    // What reaches stdout and stderr by any other way (they also carry the test runner's own
    // protocol, binary on Node 24.22, so they are searched for secrets, not parsed), and what
    // the JSON logger writes.
    const streamLines: string[] = [];
    const appLines: string[] = [];
    const capture = (stream: NodeJS.WriteStream) => {
      const original = stream.write.bind(stream);
      stream.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
        streamLines.push(...String(chunk).split('\n').filter(Boolean));
        return (original as (...a: unknown[]) => boolean)(chunk, ...rest.slice(0, 0));
      }) as typeof stream.write;
      return () => (stream.write = original as typeof stream.write);
    };
    const restoreOut = capture(process.stdout);
    const restoreErr = capture(process.stderr);
    // The JSON logger writes to its own destinations (asynchronous file descriptors in
    // production); here they are read directly, and stdout/stderr are watched for anything else.
    const sink = { write: (chunk: string) => void appLines.push(...chunk.split('\n').filter(Boolean)) };
    const secrets: string[] = [];
    try {
      const logger = createLogger({ LOG_LEVEL: 'verbose', LOG_FORMAT: 'json' }, { stdout: sink, stderr: sink });
      const t = await createTestApp({ LOG_LEVEL: 'verbose', LOG_FORMAT: 'json' }, { logger });
      try {
        // HTTP/1.1 itself refuses CR/LF in a header; what gets through must stay inside one event.
        const forgedLine = 'curl/8\t{"level":"error","message":"forged admin login"}';
        const user = await registerUser(t.http);
        secrets.push(user.password);
        const res = await t.http.post('/api/v1/auth/login').set('User-Agent', forgedLine).send({ email: user.email, password: user.password });
        secrets.push(res.body.accessToken, res.body.refreshToken, createHash('sha256').update(res.body.refreshToken).digest('hex'));
        await t.http.post('/api/v1/auth/login').send({ email: user.email, password: `${user.password}-wrong` });
        secrets.push(`${user.password}-wrong`);
        const refreshed = await t.http.post('/api/v1/auth/refresh').set('User-Agent', forgedLine).send({ refreshToken: res.body.refreshToken });
        secrets.push(refreshed.body.refreshToken, refreshed.body.accessToken);
        await t.http.get('/api/v1/users/me').set('Authorization', bearer(refreshed.body)).expect(200);
        await t.http.get('/api/v1/admin/audit').set('Authorization', bearer(refreshed.body)).expect(403);
        await t.http.post('/api/v1/auth/refresh').send({ refreshToken: res.body.refreshToken }); // reuse: logged as a warning
        await t.http.get('/api/v1/users/me').set('Authorization', 'Bearer not.a.jwt-but-secretish');
        const [{ password_hash }] = await t.db.query('SELECT password_hash FROM users WHERE id = $1', [user.id]);
        secrets.push(password_hash, t.config.JWT_SECRET, t.config.PASSWORD_PEPPER);
      } finally {
        await t.close();
      }
    } finally {
      restoreOut();
      restoreErr();
    }
    assert.ok(appLines.length >= 8, `captured ${appLines.length} log lines`);
    for (const line of streamLines) {
      for (const secret of secrets) assert.ok(!line.includes(secret), `a secret reached stdout or stderr: ${line.slice(0, 120)}`);
      assert.ok(!/secretish/.test(line));
    }
    for (const line of appLines) {
      const event = JSON.parse(line) as Record<string, unknown>;
      assert.ok(event.level && event.timestamp, line);
      for (const secret of secrets) assert.ok(!line.includes(secret), `a secret reached the log: ${line.slice(0, 120)}`);
      assert.ok(!/secretish/.test(line));
      assert.notEqual(event.message, 'forged admin login');
    }
    const requestEvents = appLines.map((l) => JSON.parse(l)).filter((e) => e.message?.event === 'request');
    assert.ok(requestEvents.some((e) => e.message.route === '/api/v1/auth/login' && e.message.status === 200));
    const me = requestEvents.find((e) => e.message.route === '/api/v1/users/me' && e.message.status === 200);
    assert.ok(me && typeof me.message.userId === 'string' && typeof me.message.sessionId === 'string' && me.message.requestId);
    // A refused authorization is logged with who tried (ASVS 16.3.2).
    const denied = requestEvents.find((e) => e.message.route === '/api/v1/admin/audit');
    assert.ok(denied && denied.message.status === 403 && denied.message.userId === me.message.userId);
    assert.ok(requestEvents.some((e) => typeof e.message.userAgent === 'string' && e.message.userAgent.includes('forged admin login')));
  });

  it('leave probes and scrapes answered below 400 out of the access log, unless ACCESS_LOG_PROBES=all; a failing one keeps its line', async () => {
    /** The routes and statuses of the access lines an app wrote while `requests` ran. */
    const accessLines = async (overrides: Record<string, string>, requests: (t: TestApp) => Promise<unknown>) => {
      const lines: string[] = [];
      const sink = { write: (chunk: string) => void lines.push(...chunk.split('\n').filter(Boolean)) };
      const t = await createTestApp(overrides, { logger: createLogger({ LOG_LEVEL: 'log', LOG_FORMAT: 'json' }, { stdout: sink, stderr: sink }) });
      try {
        await requests(t);
      } finally {
        await t.close(); // flushes the logger
      }
      return lines
        .map((l) => JSON.parse(l) as { message?: { event?: string; route?: string; status?: number } })
        .filter((e) => e.message?.event === 'request')
        .map((e) => `${e.message!.route} ${e.message!.status}`)
        .sort();
    };
    const probesAndAClient = async (t: TestApp) => {
      await t.http.get('/health/live').expect(200);
      await t.http.get('/health/ready').expect(200);
      await t.http.get('/metrics').expect(200);
      await t.http.get('/api/v1/users/me').expect(401);
    };
    assert.deepEqual(await accessLines({}, probesAndAClient), ['/api/v1/users/me 401'], 'the default: failures only');
    assert.deepEqual(await accessLines({ ACCESS_LOG_PROBES: 'all' }, probesAndAClient), [
      '/api/v1/users/me 401',
      '/health/live 200',
      '/health/ready 200',
      '/metrics 200',
    ]);
    // A scrape of an instance whose metrics are off answers 404: a failure, so it is logged.
    assert.deepEqual(await accessLines({ ACCESS_LOG_PROBES: 'failures', METRICS_ENABLED: 'false' }, (t) => t.http.get('/metrics').expect(404)), [
      '/metrics 404',
    ]);
  });
});

describe('secrets (e2e)', () => {
  const main = join(__dirname, '..', 'src', 'main.js');
  const boot = async (env: Record<string, string>) => {
    const { DATABASE_URL: _ignored, JWT_SECRET: _j, PASSWORD_PEPPER: _p, ...rest } = process.env;
    try {
      await promisify(execFile)(process.execPath, [main], {
        env: { ...rest, DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none', ...env },
        timeout: 20_000,
      });
      return { code: 0, output: '' };
    } catch (error) {
      const e = error as { code: number; stdout: string; stderr: string };
      return { code: e.code, output: `${e.stdout}${e.stderr}` };
    }
  };

  it('production refuses to start with a missing, short or well-known JWT_SECRET or pepper, without printing it', async () => {
    const strong = 'k'.repeat(8) + 'Zx81-PqW0_mNb7vC3yT5rL2sD9fG4hJ6';
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ PASSWORD_PEPPER: strong }, /JWT_SECRET is missing/],
      [{ JWT_SECRET: 'short-secret', PASSWORD_PEPPER: strong }, /JWT_SECRET is shorter than 32 bytes/],
      [{ JWT_SECRET: 'change-me-to-a-long-random-string-of-32-bytes-or-more', PASSWORD_PEPPER: strong }, /JWT_SECRET is a well-known/],
      [{ JWT_SECRET: strong }, /PASSWORD_PEPPER is missing/],
      [{ JWT_SECRET: strong, PASSWORD_PEPPER: `${strong}-pepper`, AUDIT_HMAC_KEY: `${strong}-audit` }, /KEY_ENCRYPTION_KEY is missing/],
      [
        { JWT_SECRET: strong, PASSWORD_PEPPER: `${strong}-pepper`, AUDIT_HMAC_KEY: `${strong}-audit`, KEY_ENCRYPTION_KEY: 'short-secret' },
        /KEY_ENCRYPTION_KEY is shorter than 32 bytes/,
      ],
    ];
    for (const [env, message] of cases) {
      const { code, output } = await boot({ NODE_ENV: 'production', ...env });
      assert.notEqual(code, 0);
      assert.match(output, message);
      assert.ok(!output.includes('short-secret') && !output.includes('change-me-to-a-long'), output);
      assert.doesNotMatch(output, /\n\s+at /, 'a refused configuration is one line, without a stack trace');
    }
  });
});
