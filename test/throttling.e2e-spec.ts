import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LoggerService } from '@nestjs/common';
import { auditRows } from './helpers/db';
import { bearer, newUserInput, registerAndLogin, registerUser, sleep, Tokens, uniqueName } from './helpers/factories';
import { metric } from './helpers/service-process';
import { createTestApp, freshDatabase, TEST_PASSWORD_PEPPER, TestApp } from './helpers/test-app';
import { counterKeyDigest } from '../src/common/counter-key-digest';

/** The row of rate_limits that counts the registrations of `ip`: a keyed digest, never the address. */
const registerRowKey = (ip: string) => counterKeyDigest(TEST_PASSWORD_PEPPER)(`register:${ip}`);

const WRONG = 'certainly-not-the-password';

describe('failed-login throttling (e2e)', () => {
  // Two instances on one database: the counts live in PostgreSQL, not in a process.
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    const env = { LOGIN_MAX_FAILURES_PER_IDENTIFIER: '3', LOGIN_BACKOFF_BASE: '1', LOGIN_FAILURE_WINDOW: '30' };
    a = await createTestApp(env);
    b = await createTestApp(env);
  });
  after(async () => {
    await a.close();
    await b.close();
  });

  it('backs off after the maximum, refusing even the right password, on every instance; then lets the user in', async () => {
    const user = await registerUser(a.http);
    for (let i = 0; i < 3; i++) {
      const app = i % 2 ? b : a;
      assert.equal((await app.http.post('/api/v1/auth/login').send({ email: user.email, password: WRONG })).status, 401);
    }
    const locked = await b.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password });
    assert.equal(locked.status, 429);
    assert.equal(locked.headers['retry-after'], '1');
    assert.deepEqual(locked.body, { statusCode: 429, error: 'Too Many Requests', message: 'Too many failed logins; try again later' });
    const [{ count }] = await a.db.query('SELECT count(*)::int AS count FROM sessions WHERE user_id = $1', [user.id]);
    assert.equal(count, 0);

    const lockedEvents = await auditRows(a.db, { userId: user.id, type: 'ACCOUNT_LOCKED' });
    assert.equal(lockedEvents.length, 1);
    assert.deepEqual(lockedEvents[0].metadata, { scope: 'identifier', lockedSeconds: 1 });
    assert.equal((await auditRows(a.db, { userId: user.id, type: 'LOGIN_FAILED' })).length, 3);

    await sleep(1100);
    assert.equal((await a.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password })).status, 200);
    // A success starts the identifier's count again.
    assert.equal((await a.http.post('/api/v1/auth/login').send({ email: user.email, password: WRONG })).status, 401);
    assert.equal((await a.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password })).status, 200);
  });

  it('grows the back-off with each further failure', async () => {
    const user = await registerUser(a.http);
    for (let i = 0; i < 3; i++) await a.http.post('/api/v1/auth/login').send({ username: user.username, password: WRONG }).expect(401);
    assert.equal((await a.http.post('/api/v1/auth/login').send({ username: user.username, password: WRONG })).headers['retry-after'], '1');
    await sleep(1100);
    await a.http.post('/api/v1/auth/login').send({ username: user.username, password: WRONG }).expect(401);
    const again = await a.http.post('/api/v1/auth/login').send({ username: user.username, password: user.password });
    assert.equal(again.status, 429);
    assert.equal(again.headers['retry-after'], '2');
  });

  it('holds the first failure after a back-off at its cap again: a back-off is no quiet window, so the count never starts again from zero', async () => {
    // Its own instance: a window of 2 s, so that a back-off reaches its cap (1 s, then 2 s) in seconds.
    const short = await createTestApp({ LOGIN_MAX_FAILURES_PER_IDENTIFIER: '3', LOGIN_BACKOFF_BASE: '1', LOGIN_FAILURE_WINDOW: '2' });
    try {
      const user = await registerUser(short.http);
      const attempt = (password = WRONG) => short.http.post('/api/v1/auth/login').send({ username: user.username, password });
      for (let i = 0; i < 3; i++) assert.equal((await attempt()).status, 401);
      assert.equal((await attempt()).headers['retry-after'], '1');
      await sleep(1100);
      assert.equal((await attempt()).status, 401); // the 4th failure: a back-off of 2 s, the cap
      assert.equal((await attempt(user.password)).headers['retry-after'], '2');
      await sleep(2100);
      // The cap's back-off is over, and its failure more than a window ago: still no fresh count.
      assert.equal((await attempt()).status, 401);
      const held = await attempt(user.password);
      assert.equal(held.status, 429, 'held again at once (until 0.25.0: a fresh allowance of 3)');
      assert.equal(held.headers['retry-after'], '2');
    } finally {
      await short.close();
    }
  });

  it('treats an unknown identifier exactly like a known one, so a 429 reveals nothing', async () => {
    const user = await registerUser(a.http);
    const ghost = `${uniqueName()}@example.test`;
    const answers: Array<{ status: number; body: unknown; retry: unknown }> = [];
    for (const email of [user.email, ghost]) {
      const seq = [];
      for (let i = 0; i < 4; i++) {
        const res = await a.http.post('/api/v1/auth/login').send({ email, password: WRONG });
        seq.push({ status: res.status, body: res.body, retry: res.headers['retry-after'] });
      }
      answers.push(...seq);
    }
    assert.deepEqual(answers.slice(0, 4), answers.slice(4));
    assert.deepEqual(
      answers.slice(0, 4).map((x) => x.status),
      [401, 401, 401, 429],
    );
  });

  it('counts every spelling that finds the account on its one counter, lower-cased as the lookup does (İ included)', async () => {
    // JavaScript lower-cases 'İ' to 'i' and a combining dot; PostgreSQL's lower(), which the
    // lookup uses, to 'i': the same account, and it must be the same counter.
    const user = await registerUser(a.http, { email: `vi_${uniqueName()}@example.test` });
    const dotted = user.email.replace('vi_', 'v\u0130_');
    const [{ found }] = await a.db.query('SELECT count(*)::int AS found FROM users WHERE lower(email) = lower($1)', [dotted]);
    assert.equal(found, 1, 'the dotted spelling finds the account');
    for (let i = 0; i < 3; i++) {
      assert.equal((await a.http.post('/api/v1/auth/login').send({ email: user.email, password: WRONG })).status, 401);
    }
    const res = await b.http.post('/api/v1/auth/login').send({ email: dotted, password: user.password });
    assert.equal(res.status, 429, JSON.stringify(res.body));
    const [{ count }] = await a.db.query('SELECT count(*)::int AS count FROM sessions WHERE user_id = $1', [user.id]);
    assert.equal(count, 0);
  });

  it('lets no more than the maximum of parallel guesses be checked', async () => {
    const user = await registerUser(a.http);
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => (i % 2 ? a : b).http.post('/api/v1/auth/login').send({ email: user.email, password: WRONG })),
    );
    const statuses = results.map((r) => r.status).sort();
    assert.deepEqual(statuses, [...Array(3).fill(401), ...Array(9).fill(429)]);
    assert.equal((await auditRows(a.db, { userId: user.id, type: 'LOGIN_FAILED' })).length, 3);
  });
});

describe('per-IP throttling and the general rate limit (e2e)', () => {
  let t: TestApp;
  let untrusting: TestApp;
  before(async () => {
    t = await createTestApp({ LOGIN_MAX_FAILURES_PER_IP: '3', LOGIN_BACKOFF_BASE: '5', TRUST_PROXY: 'true', RATE_LIMIT_PER_MINUTE: '8' });
    untrusting = await createTestApp({ RATE_LIMIT_PER_MINUTE: '1000', TRUST_PROXY: 'false' });
  });
  after(async () => {
    await t.close();
    await untrusting.close();
  });

  it('counts an address whose proxy appends a port as that address, whatever the port (and records it without)', async () => {
    const address = '203.0.113.81';
    for (let port = 5001; port <= 5003; port++) {
      const res = await t.http
        .post('/api/v1/auth/login')
        .set('X-Forwarded-For', `${address}:${port}`)
        .send({ email: `${uniqueName()}@x.test`, password: WRONG });
      assert.equal(res.status, 401);
    }
    const user = await registerUser(t.http);
    // A fourth port is no new address (until 0.25.0 every port was: a fresh count each connection).
    const blocked = await t.http
      .post('/api/v1/auth/login')
      .set('X-Forwarded-For', `${address}:5004`)
      .send({ email: user.email, password: user.password });
    assert.equal(blocked.status, 429);
    const recorded = await t.db.query(`SELECT DISTINCT ip_address FROM audit_events WHERE type = 'LOGIN_FAILED' AND ip_address LIKE $1`, [
      `${address}%`,
    ]);
    assert.deepEqual(recorded, [{ ip_address: address }]);
  });

  it('backs off an IP that fails across many identifiers, and only that IP', async () => {
    const attacker = '203.0.113.7';
    for (let i = 0; i < 3; i++) {
      const res = await t.http
        .post('/api/v1/auth/login')
        .set('X-Forwarded-For', attacker)
        .send({ email: `${uniqueName()}@x.test`, password: WRONG });
      assert.equal(res.status, 401);
    }
    const user = await registerUser(t.http);
    const blocked = await t.http.post('/api/v1/auth/login').set('X-Forwarded-For', attacker).send({ email: user.email, password: user.password });
    assert.equal(blocked.status, 429);
    assert.ok(Number(blocked.headers['retry-after']) >= 4);
    const fromElsewhere = await t.http
      .post('/api/v1/auth/login')
      .set('X-Forwarded-For', '198.51.100.2')
      .send({ email: user.email, password: user.password });
    assert.equal(fromElsewhere.status, 200);
    const ipLocks = await t.db.query(`SELECT * FROM audit_events WHERE type = 'ACCOUNT_LOCKED' AND metadata->>'scope' = 'ip' AND ip_address = $1`, [
      attacker,
    ]);
    assert.equal(ipLocks.length, 1);
  });

  it('backs off an IPv6 client by its /64, whichever low 64 bits it sends from', async () => {
    for (let i = 1; i <= 3; i++) {
      const res = await t.http
        .post('/api/v1/auth/login')
        .set('X-Forwarded-For', `2001:db8:71:1::${i}`)
        .send({ email: `${uniqueName()}@x.test`, password: WRONG });
      assert.equal(res.status, 401);
    }
    const user = await registerUser(t.http);
    const login = (ip: string) => t.http.post('/api/v1/auth/login').set('X-Forwarded-For', ip).send({ email: user.email, password: user.password });
    assert.equal((await login('2001:db8:71:1:ffff:ffff:ffff:fffe')).status, 429, 'another address of the same /64');
    assert.equal((await login('2001:db8:71:2::1')).status, 200, 'the next /64 is another client');
  });

  it('limits requests per IP over all routes together, answering 429 with Retry-After', async () => {
    const ip = '192.0.2.55';
    const requests = [
      () => t.http.get('/api/v1/users/me'),
      () => t.http.post('/api/v1/auth/login').send({}),
      () => t.http.get('/api/v1/audit'),
      () => t.http.get('/health/live'), // probes are not counted
      () => t.http.get('/metrics'),
    ];
    const statuses = [];
    // Public and authenticated routes count together (an unmatched path is a 404 without any work).
    for (let i = 0; statuses.length < 8; i++) {
      const res = await requests[i % requests.length]().set('X-Forwarded-For', ip);
      if (i % requests.length < 3) {
        statuses.push(res.status);
        // Refusals by the route (401, 400) carry the limit's headers as successes do.
        assert.equal(res.headers['x-ratelimit-remaining'], String(8 - statuses.length), `answer ${statuses.length}`);
      } else {
        assert.equal(res.status, 200);
        assert.equal(res.headers['x-ratelimit-remaining'], undefined, 'probes are not counted');
      }
    }
    assert.deepEqual(statuses, [401, 400, 401, 401, 400, 401, 401, 400]);
    const over = await t.http.get('/api/v1/users/me').set('X-Forwarded-For', ip);
    assert.equal(over.status, 429);
    assert.ok(Number(over.headers['retry-after']) > 0);
    // The limit's own 429 labels itself like every other answer (openapi.json says so): none left,
    // and the reset is when requests are accepted again.
    assert.equal(over.headers['x-ratelimit-limit'], '8');
    assert.equal(over.headers['x-ratelimit-remaining'], '0');
    assert.equal(over.headers['x-ratelimit-reset'], over.headers['retry-after']);
    assert.equal((await t.http.get('/health/live').set('X-Forwarded-For', ip)).status, 200);
    assert.equal((await t.http.get('/api/v1/users/me').set('X-Forwarded-For', '192.0.2.56')).status, 401);
  });

  it('ignores X-Forwarded-For unless TRUST_PROXY says so', async () => {
    const remaining = [];
    for (let i = 0; i < 3; i++) {
      const res = await untrusting.http.get('/api/v1/users/me').set('X-Forwarded-For', `192.0.2.${100 + i}`);
      remaining.push(Number(res.headers['x-ratelimit-remaining']));
    }
    // Three "different" forwarded addresses count as one client: the socket's.
    assert.ok(remaining[0] > 0, String(remaining[0]));
    assert.deepEqual(remaining, [remaining[0], remaining[0] - 1, remaining[0] - 2]);
  });
});

describe('malicious lockout (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ LOGIN_MAX_FAILURES_PER_IDENTIFIER: '3', LOGIN_BACKOFF_BASE: '60', TRUST_PROXY: 'true' });
  });
  after(async () => {
    await t.close();
  });

  it('an attacker elsewhere cannot lock a user out of the place they logged in from before', async () => {
    const user = await registerUser(t.http);
    const home = '198.51.100.10';
    const attacker = '203.0.113.99';
    const loginFrom = (ip: string, password: string) =>
      t.http.post('/api/v1/auth/login').set('X-Forwarded-For', ip).send({ email: user.email, password });

    assert.equal((await loginFrom(home, user.password)).status, 200);
    for (let i = 0; i < 3; i++) assert.equal((await loginFrom(attacker, WRONG)).status, 401);
    assert.equal((await loginFrom(attacker, user.password)).status, 429);
    // A new place is held by the back-off too; home is not.
    assert.equal((await loginFrom('192.0.2.200', user.password)).status, 429);
    assert.equal((await loginFrom(home, user.password)).status, 200);
  });

  it("a thief's wrong current passwords from elsewhere do not keep the user from changing the password where they logged in", async () => {
    const user = await registerUser(t.http);
    const home = '198.51.100.20';
    const thief = '203.0.113.120';
    const tokens = (
      await t.http.post('/api/v1/auth/login').set('X-Forwarded-For', home).send({ email: user.email, password: user.password }).expect(200)
    ).body as Tokens;
    const changeFrom = (ip: string, currentPassword: string, newPassword = 'a-fresh-long-password') =>
      t.http.put('/api/v1/users/me/password').set('Authorization', bearer(tokens)).set('X-Forwarded-For', ip).send({ currentPassword, newPassword });
    // The stolen access token, used from elsewhere: guesses, then held by the account's back-off.
    for (let i = 0; i < 3; i++) assert.equal((await changeFrom(thief, `${WRONG}-${i}`)).status, 401);
    assert.equal((await changeFrom(thief, user.password)).status, 429);
    // The owner, where they logged in: not held.
    assert.equal((await changeFrom(home, user.password)).status, 204);
  });

  it('a password change takes back the exemption of every other place the account was logged into, and makes the place it was changed from known', async () => {
    const user = await registerUser(t.http);
    const home = '198.51.100.30';
    const phisher = '203.0.113.130';
    const login = (ip: string, body: object) => t.http.post('/api/v1/auth/login').set('X-Forwarded-For', ip).send(body);
    const digest = counterKeyDigest(TEST_PASSWORD_PEPPER);
    const names = { email: `email:${user.email.toLowerCase()}`, username: `username:${user.username.toLowerCase()}`, account: `account:${user.id}` };
    const keysOf = (ip: string, ...of: Array<keyof typeof names>) => of.map((name) => digest(`known:${names[name]}|${ip}`));
    const knownKeys = async () =>
      (await t.db.query(`SELECT key FROM login_known_clients WHERE account = $1 ORDER BY key`, [digest(`known-account:${user.id}`)])).map(
        (r: { key: string }) => r.key,
      );
    // The phisher logs in with the stolen password, by both names; the owner logs in at home, by email.
    assert.equal((await login(phisher, { email: user.email, password: user.password })).status, 200);
    assert.equal((await login(phisher, { username: user.username, password: user.password })).status, 200);
    const tokens = (await login(home, { email: user.email, password: user.password }).expect(200)).body as Tokens;
    assert.deepEqual(await knownKeys(), [...keysOf(phisher, 'email', 'username', 'account'), ...keysOf(home, 'email', 'account')].sort());
    const newPassword = 'another-long-password-of-the-owner';
    await t.http
      .put('/api/v1/users/me/password')
      .set('Authorization', bearer(tokens))
      .set('X-Forwarded-For', home)
      .send({ currentPassword: user.password, newPassword })
      .expect(204);
    // The phisher's rows are gone; home is known by every name, its username too (the change is as good as a login).
    assert.deepEqual(await knownKeys(), keysOf(home, 'email', 'username', 'account').sort());
    // From the phisher's address the new password is guessed like from anywhere else: held
    // after the maximum by email and by username (before 0.25.0: 401 for ever, never 429).
    for (const name of [{ email: user.email }, { username: user.username }]) {
      for (let i = 0; i < 3; i++) assert.equal((await login(phisher, { ...name, password: `${WRONG}-${i}` })).status, 401);
      assert.equal((await login(phisher, { ...name, password: `${WRONG}-x` })).status, 429, JSON.stringify(name));
    }
    // Home is not held by either name's back-off (the username first: a success clears its count).
    assert.equal((await login(home, { username: user.username, password: newPassword })).status, 200);
    assert.equal((await login(home, { email: user.email, password: newPassword })).status, 200);
  });

  it('a name one account gave up and another took is known nowhere the first account logged in from (no exemption planted in advance)', async () => {
    const planter = '203.0.113.140';
    const home = '198.51.100.40';
    const login = (ip: string, body: object) => t.http.post('/api/v1/auth/login').set('X-Forwarded-For', ip).send(body);
    const rename = (ip: string, tokens: Tokens, username: string) =>
      t.http.patch('/api/v1/users/me').set('X-Forwarded-For', ip).set('Authorization', bearer(tokens)).send({ username }).expect(200);
    // The planter logs in by a name from its address (known there), then gives the name up.
    const first = await registerUser(t.http);
    const name = first.username;
    const planted = (await login(planter, { username: name, password: first.password }).expect(200)).body as Tokens;
    await rename(planter, planted, uniqueName('gave-up'));
    // Another account takes the name, and logs in by it at home.
    const second = await registerUser(t.http);
    const secondTokens = (await login(home, { email: second.email, password: second.password }).expect(200)).body as Tokens;
    await rename(home, secondTokens, name);
    assert.equal((await login(home, { username: name, password: second.password })).status, 200);
    // The name's back-off, by failures from elsewhere.
    for (let i = 0; i < 3; i++) assert.equal((await login('192.0.2.140', { username: name, password: `${WRONG}-${i}` })).status, 401);
    // The planter's address is held like any other (before 0.26.0: 401, its guesses held by its own IP's limit only).
    assert.equal((await login(planter, { username: name, password: `${WRONG}-x` })).status, 429);
    // The new owner's own place is not.
    assert.equal((await login(home, { username: name, password: second.password })).status, 200);
  });

  it('a rename keeps the place it was made from known under the new name, when that place is known for the account; an unknown place gains nothing', async () => {
    const user = await registerUser(t.http);
    const home = '198.51.100.50';
    const thief = '203.0.113.150';
    const login = (ip: string, body: object) => t.http.post('/api/v1/auth/login').set('X-Forwarded-For', ip).send(body);
    const rename = (ip: string, tokens: Tokens, username: string) =>
      t.http.patch('/api/v1/users/me').set('X-Forwarded-For', ip).set('Authorization', bearer(tokens)).send({ username }).expect(200);
    const heldByFailures = async (username: string) => {
      for (let i = 0; i < 3; i++) assert.equal((await login('192.0.2.150', { username, password: `${WRONG}-${i}` })).status, 401);
    };
    // The owner logs in at home by email, and renames there: home is known under the new name
    // at once, not only after a login by it (until 0.29.0 it was a new place for the name).
    const tokens = (await login(home, { email: user.email, password: user.password }).expect(200)).body as Tokens;
    const renamed = uniqueName('renamed');
    await rename(home, tokens, renamed);
    await heldByFailures(renamed);
    assert.equal((await login('192.0.2.151', { username: renamed, password: user.password })).status, 429, 'a new place is held');
    assert.equal((await login(home, { username: renamed, password: user.password })).status, 200);
    // A stolen access token renaming from a place never logged into the account makes it known nowhere.
    const byThief = uniqueName('thief');
    await rename(thief, tokens, byThief);
    await heldByFailures(byThief);
    assert.equal((await login(thief, { username: byThief, password: user.password })).status, 429);
  });

  it("knows an IPv6 client by its /64: the user's privacy address changed since, and home still lets them in", async () => {
    const user = await registerUser(t.http);
    const loginFrom = (ip: string, password: string) =>
      t.http.post('/api/v1/auth/login').set('X-Forwarded-For', ip).send({ email: user.email, password });
    assert.equal((await loginFrom('2001:db8:72:1:a1b2:c3d4:e5f6:1', user.password)).status, 200);
    for (let i = 0; i < 3; i++) assert.equal((await loginFrom('2001:db8:99::7', WRONG)).status, 401);
    assert.equal((await loginFrom('2001:db8:99::7', user.password)).status, 429);
    assert.equal((await loginFrom('2001:db8:72:2::1', user.password)).status, 429, 'another /64 is a new place');
    // (Last: a login that succeeds starts the identifier's count again.)
    assert.equal((await loginFrom('2001:db8:72:1:9f8e:7d6c:5b4a:2', user.password)).status, 200, 'a new address of the same /64');
  });
});

describe('registration limit per client IP (e2e)', () => {
  // Two instances on one database: the count is a row in PostgreSQL, exact across them.
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    const env = { REGISTER_MAX_PER_IP: '3', REGISTER_WINDOW: '3', TRUST_PROXY: 'true' };
    a = await createTestApp(env);
    b = await createTestApp(env);
  });
  after(async () => {
    await a.close();
    await b.close();
  });

  const registerFrom = (app: TestApp, ip: string, body: object) => app.http.post('/api/v1/auth/register').set('X-Forwarded-For', ip).send(body);
  const accounts = async (email: string) => (await a.db.query(`SELECT count(*)::int AS n FROM users WHERE email = $1`, [email]))[0].n as number;
  const registerEvents = async () => (await a.db.query(`SELECT count(*)::int AS n FROM audit_events WHERE type = 'REGISTER'`))[0].n as number;

  it('answers the registration one too many from an IP 429 with Retry-After, on every instance, and creates nothing; a bad body counts nothing', async () => {
    const ip = '198.51.100.70';
    // Bad input is a 400 before the count: these three leave the IP its whole allowance.
    for (let i = 0; i < 3; i++) assert.equal((await registerFrom(a, ip, { ...newUserInput(), email: 'not-an-email' })).status, 400);
    const first = newUserInput();
    assert.equal((await registerFrom(a, ip, first)).status, 201);
    // A taken address counts too: its bcrypt work was done.
    assert.equal((await registerFrom(b, ip, first)).status, 409);
    assert.equal((await registerFrom(a, ip, newUserInput())).status, 201);
    const events = await registerEvents();

    const refused = newUserInput();
    const res = await registerFrom(b, ip, refused);
    assert.equal(res.status, 429, res.text);
    assert.deepEqual(res.body, { statusCode: 429, error: 'Too Many Requests', message: 'Too many registrations from this address; try again later' });
    const retryAfter = Number(res.headers['retry-after']);
    assert.ok(retryAfter >= 1 && retryAfter <= 3, `Retry-After ${res.headers['retry-after']}`);
    assert.equal(await accounts(refused.email), 0);
    assert.equal(await registerEvents(), events, 'no REGISTER event for a refused registration');
    assert.equal((await registerFrom(a, ip, refused)).status, 429, 'the other instance refuses it too');

    // Another client is not held back.
    assert.equal((await registerFrom(a, '198.51.100.71', newUserInput())).status, 201);
    // Once the window is over, the IP starts again.
    await sleep(retryAfter * 1000 + 100);
    assert.equal((await registerFrom(b, ip, refused)).status, 201);
    assert.equal(await accounts(refused.email), 1);
  });

  it('counts IPv6 clients per /64', async () => {
    for (let i = 1; i <= 3; i++) assert.equal((await registerFrom(a, `2001:db8:70:1::${i}`, newUserInput())).status, 201);
    assert.equal((await registerFrom(b, '2001:db8:70:1:ffff::9', newUserInput())).status, 429);
    assert.equal((await registerFrom(b, '2001:db8:70:2::1', newUserInput())).status, 201);
  });

  it("counts an address's username and email changes with its registrations (all answer 409 for a taken one)", async () => {
    const limited = await createTestApp({ REGISTER_MAX_PER_IP: '3', REGISTER_WINDOW: '600', TRUST_PROXY: 'true' });
    try {
      const ip = '198.51.100.73';
      const { user, tokens } = await registerAndLogin(limited.http);
      const taken = (await registerUser(limited.http)).username;
      const rename = (username: string) =>
        limited.http.patch('/api/v1/users/me').set('X-Forwarded-For', ip).set('Authorization', bearer(tokens)).send({ username });
      assert.equal((await rename(uniqueName('renamed'))).status, 200);
      // A taken name is the probe this limit is for: counted too.
      assert.equal((await rename(taken)).status, 409);
      const current = uniqueName('renamed');
      assert.equal((await rename(current)).status, 200);
      // The same name again changes nothing, and counts nothing.
      assert.equal((await rename(current)).status, 200);
      const refusedBefore = metric((await limited.http.get('/metrics')).text, 'sessionary_registrations_refused_total{limit="changes"}');
      const refused = await rename(taken);
      assert.equal(refused.status, 429, refused.text);
      assert.equal(refused.body.message, 'Too many registrations and username or email changes from this address; try again later');
      assert.ok(Number(refused.headers['retry-after']) > 0);
      assert.equal((await rename(uniqueName('renamed'))).status, 429);
      const [{ username }] = await limited.db.query(`SELECT username FROM users WHERE id = (SELECT user_id FROM sessions WHERE id = $1)`, [
        tokens.sessionId,
      ]);
      assert.equal(username, current, 'a refused change writes nothing');
      // An email change probes emails the same way (with the step-up it needs): refused too.
      const email = await limited.http
        .patch('/api/v1/users/me')
        .set('X-Forwarded-For', ip)
        .set('Authorization', bearer(tokens))
        .send({ email: `${uniqueName('moved')}@example.com`, currentPassword: user.password });
      assert.equal(email.status, 429, email.text);
      assert.equal(metric((await limited.http.get('/metrics')).text, 'sessionary_registrations_refused_total{limit="changes"}'), refusedBefore + 3);
      // The allowance is the address's: its registrations are refused as well, another address is not.
      assert.equal((await limited.http.post('/api/v1/auth/register').set('X-Forwarded-For', ip).send(newUserInput())).status, 429);
      assert.equal(
        (
          await limited.http
            .patch('/api/v1/users/me')
            .set('X-Forwarded-For', '198.51.100.75')
            .set('Authorization', bearer(tokens))
            .send({ username: uniqueName('renamed') })
        ).status,
        200,
      );
    } finally {
      await limited.close();
    }
  });

  it('REGISTER_MAX_PER_IP=0 counts nothing', async () => {
    const off = await createTestApp({ REGISTER_MAX_PER_IP: '0', TRUST_PROXY: 'true' });
    try {
      const rows = () => off.db.query(`SELECT key, hits FROM rate_limits ORDER BY key`);
      const before = await rows();
      for (let i = 0; i < 5; i++) assert.equal((await registerFrom(off, '198.51.100.72', newUserInput())).status, 201);
      const after = await rows();
      assert.deepEqual(after, before);
      assert.ok(!after.some((r: { key: string }) => r.key === registerRowKey('198.51.100.72')));
    } finally {
      await off.close();
    }
  });
});

describe('registration limit for all clients together (e2e, REGISTER_MAX_TOTAL)', () => {
  // Two instances on a database of their own: the total is one row of rate_limits there.
  let a: TestApp;
  let b: TestApp;
  // The limit's own warnings (two apps in one process bring others, e.g. TypeORM's about the data source's name).
  const warnings: string[] = [];
  const logger: LoggerService = {
    log() {},
    error() {},
    warn: (message: unknown, context?: unknown) => void (context === 'RegistrationLimitService' && warnings.push(String(message))),
  };
  before(async () => {
    const env = { DATABASE_URL: await freshDatabase(), REGISTER_MAX_PER_IP: '2', REGISTER_MAX_TOTAL: '3', REGISTER_WINDOW: '4', TRUST_PROXY: 'true' };
    a = await createTestApp(env, { logger });
    b = await createTestApp(env, { logger });
  });
  after(async () => {
    await a.close();
    await b.close();
  });

  const registerFrom = (app: TestApp, ip: string, body: object) => app.http.post('/api/v1/auth/register').set('X-Forwarded-For', ip).send(body);
  const refusedOn = async (app: TestApp) => {
    const text = (await app.http.get('/metrics')).text;
    return {
      address: metric(text, 'sessionary_registrations_refused_total{limit="address"}'),
      total: metric(text, 'sessionary_registrations_refused_total{limit="total"}'),
    };
  };

  it('refuses everyone 429 once all addresses together reach it, on every instance, creates nothing, warns once; a client refused by its own limit does not spend it, nor is its own allowance spent when the total refuses it', async () => {
    assert.equal((await registerFrom(a, '198.51.100.80', newUserInput())).status, 201);
    assert.equal((await registerFrom(b, '198.51.100.80', newUserInput())).status, 201);
    // Refused by the per-IP limit (2): not counted in the total, which stays at 2 of 3.
    const own = await registerFrom(a, '198.51.100.80', newUserInput());
    assert.equal(own.status, 429);
    assert.equal(own.body.message, 'Too many registrations from this address; try again later');
    assert.equal((await registerFrom(b, '198.51.100.81', newUserInput())).status, 201);
    assert.deepEqual(warnings, []);

    const refused = newUserInput();
    const res = await registerFrom(a, '198.51.100.82', refused);
    assert.equal(res.status, 429, res.text);
    assert.deepEqual(res.body, { statusCode: 429, error: 'Too Many Requests', message: 'Too many registrations right now; try again later' });
    const retryAfter = Number(res.headers['retry-after']);
    assert.ok(retryAfter >= 1 && retryAfter <= 4, `Retry-After ${res.headers['retry-after']}`);
    assert.equal((await registerFrom(b, '2001:db8:80::1', newUserInput())).status, 429, 'the other instance refuses everyone too');
    // Refused by the total twice more: the address's own allowance (2) is not spent by refusals.
    assert.equal((await registerFrom(b, '198.51.100.82', newUserInput())).status, 429);
    assert.equal((await registerFrom(a, '198.51.100.82', newUserInput())).status, 429);
    const hitsOf = async (ip: string) => (await a.db.query(`SELECT hits FROM rate_limits WHERE key = $1`, [registerRowKey(ip)]))[0]?.hits as number;
    assert.deepEqual([await hitsOf('198.51.100.80'), await hitsOf('198.51.100.82')], [3, 0]);
    const [{ n }] = await a.db.query(`SELECT count(*)::int AS n FROM users WHERE email = $1`, [refused.email]);
    assert.equal(n, 0);
    assert.equal((await a.db.query(`SELECT count(*)::int AS n FROM audit_events WHERE type = 'REGISTER'`))[0].n, 3);
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(warnings[0], /^REGISTER_MAX_TOTAL \(3\) reached: registrations are refused for everyone for \d+ s/);

    const [onA, onB] = [await refusedOn(a), await refusedOn(b)];
    assert.deepEqual({ address: onA.address + onB.address, total: onA.total + onB.total }, { address: 1, total: 4 });

    // Once the window is over, registrations go through again.
    await sleep(retryAfter * 1000 + 100);
    assert.equal((await registerFrom(b, '198.51.100.82', refused)).status, 201);
    assert.equal((await registerFrom(a, '198.51.100.82', newUserInput())).status, 201);
  });
});
