import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { AUDIT_EVENT_TYPES } from '../src/audit/audit-event.entity';
import { BOUNDED_EVENT_TYPES, BOUNDED_WINDOW_QUERY } from '../src/audit/bounded-audit.service';
import { RefusedRequestsTally } from '../src/audit/refused-requests-tally';
import { AccessTokenService } from '../src/auth/access-token.service';
import type { SessionEntity } from '../src/sessions/session.entity';
import { UsersService } from '../src/users/users.service';
import { AuditRow, auditRows } from './helpers/db';
import { bearer, login, newUserInput, registerAndLogin, registerUser, sleep, TestUser, Tokens } from './helpers/factories';
import { createTestApp, TestApp } from './helpers/test-app';

const WRONG = 'certainly-not-the-password';
let ipCounter = 0;
/** A fresh documentation address (RFC 5737) and user agent for each request of a test. */
const nextClient = () => {
  ipCounter++;
  return { ip: `203.0.113.${ipCounter % 250}`, ua: `audit-test/${ipCounter} (${randomBytes(3).toString('hex')})` };
};

type ClientId = { ip: string; ua: string };

describe('audit events record the client (e2e, TRUST_PROXY)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ TRUST_PROXY: 'true', LOGIN_MAX_FAILURES_PER_IDENTIFIER: '3', LOGIN_BACKOFF_BASE: '1' });
  });
  after(async () => {
    await t.close();
  });

  it('every event type with a client records the forwarded client IP and user agent of the request that caused it', async () => {
    const input = newUserInput();
    const user: TestUser = { ...input, id: '' };
    let seen = '0';
    const covered = new Set<string>();
    /** Runs one step from a fresh client; the events it wrote are exactly `types`, each with that client. */
    const step = async (types: string[], action: (c: ClientId) => Promise<unknown>, withClient = true): Promise<void> => {
      const c = nextClient();
      await action(c);
      const rows = (await auditRows(t.db, { userId: user.id })) as Array<AuditRow & { seq: string }>;
      const fresh = rows.filter((r) => BigInt(r.seq) > BigInt(seen));
      seen = rows.length ? rows[rows.length - 1].seq : seen;
      assert.deepEqual(fresh.map((r) => r.type).sort(), [...types].sort(), `events of the step expecting ${types}`);
      for (const r of fresh) {
        assert.deepEqual([r.ip_address, r.user_agent], withClient ? [c.ip, c.ua] : [null, null], `${r.type}: ip_address and user_agent`);
        covered.add(r.type);
      }
    };
    const as = <T extends { set(h: string, v: string): T }>(req: T, c: ClientId) => req.set('X-Forwarded-For', c.ip).set('User-Agent', c.ua);
    const loginAs = async (c: ClientId): Promise<Tokens> => {
      const res = await as(t.http.post('/api/v1/auth/login'), c).send({ email: user.email, password: user.password });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return res.body;
    };
    let s1!: Tokens, s2!: Tokens, s4!: Tokens, s5!: Tokens, auth!: string;

    await step(['REGISTER'], async (c) => {
      const res = await as(t.http.post('/api/v1/auth/register'), c).send(input);
      assert.equal(res.status, 201);
      user.id = res.body.id;
    });
    await step(['LOGIN_FAILED'], (c) => as(t.http.post('/api/v1/auth/login'), c).send({ email: user.email, password: WRONG }).expect(401));
    await step(['LOGIN'], async (c) => (s1 = await loginAs(c)));
    await step(['LOGIN'], async (c) => (s2 = await loginAs(c)));
    await step(['TOKEN_REFRESH'], async (c) => {
      const res = await as(t.http.post('/api/v1/auth/refresh'), c).send({ refreshToken: s1.refreshToken }).expect(200);
      auth = bearer(res.body);
    });
    await step(['PROFILE_UPDATED'], (c) =>
      as(t.http.patch('/api/v1/users/me'), c)
        .set('Authorization', auth)
        .send({ username: `${user.username}x` })
        .expect(200),
    );
    await step(['REAUTHENTICATED'], async (c) => {
      const res = await as(t.http.post('/api/v1/auth/reauthenticate'), c).set('Authorization', auth).send({ password: user.password }).expect(200);
      auth = bearer(res.body);
    });
    await step(['SESSION_REVOKED'], (c) =>
      as(t.http.delete(`/api/v1/sessions/${s2.sessionId}`), c)
        .set('Authorization', auth)
        .expect(204),
    );
    await step(['LOGIN_FAILED'], (c) =>
      as(t.http.put('/api/v1/users/me/password'), c)
        .set('Authorization', auth)
        .send({ currentPassword: WRONG, newPassword: `new-${user.password}` })
        .expect(401),
    );
    await step(['LOGIN'], (c) => loginAs(c));
    await step(['PASSWORD_CHANGED', 'SESSION_REVOKED'], async (c) => {
      await as(t.http.put('/api/v1/users/me/password'), c)
        .set('Authorization', auth)
        .send({ currentPassword: user.password, newPassword: `new-${user.password}` })
        .expect(204);
      user.password = `new-${user.password}`;
    });
    await step(['REFRESH_TOKEN_REUSE'], (c) => as(t.http.post('/api/v1/auth/refresh'), c).send({ refreshToken: s1.refreshToken }).expect(401));
    await step(['REFRESH_FAILED'], (c) => as(t.http.post('/api/v1/auth/refresh'), c).send({ refreshToken: s1.refreshToken }).expect(401));
    await step(['LOGIN'], async (c) => (s4 = await loginAs(c)));
    await step(['LOGOUT'], (c) => as(t.http.post('/api/v1/auth/logout'), c).set('Authorization', bearer(s4)).expect(204));
    await step(['LOGIN'], async (c) => (s5 = await loginAs(c)));
    await step(['ACCESS_DENIED'], (c) => as(t.http.get('/api/v1/admin/audit'), c).set('Authorization', bearer(s5)).expect(403));
    // ROLE_CHANGED is made by the admin CLI only (UsersService.setRole): there is no client to record.
    await step(['ROLE_CHANGED'], () => t.app.get(UsersService).setRole(user.email, 'admin', 'cli'), false);
    // An admin's revocation records the admin's client on the ended session's event (a new
    // session: s5 may be cached as a user's until the role change's NOTIFY arrives).
    let adminTokens!: Tokens;
    await step(['LOGIN'], async (c) => (adminTokens = await loginAs(c)));
    const victim = await registerAndLogin(t.http);
    await step([], async (c) => {
      await as(t.http.delete(`/api/v1/admin/users/${victim.user.id}/sessions`), c)
        .set('Authorization', bearer(adminTokens))
        .expect(200);
      const revokedByAdmin = await auditRows(t.db, { sessionId: victim.tokens.sessionId, type: 'SESSION_REVOKED' });
      assert.equal(revokedByAdmin.length, 1);
      assert.deepEqual([revokedByAdmin[0].ip_address, revokedByAdmin[0].user_agent], [c.ip, c.ua]);
    });
    await step(['LOGIN_FAILED', 'LOGIN_FAILED', 'LOGIN_FAILED', 'ACCOUNT_LOCKED'], async (c) => {
      for (let i = 0; i < 3; i++) await as(t.http.post('/api/v1/auth/login'), c).send({ email: user.email, password: WRONG }).expect(401);
    });

    // Every type is covered except SESSION_EXPIRED, which a deadline causes, not a request,
    // KEY_ROTATED, which the boot, the CLI or the scheduled job cause (test/signing-keys.e2e-spec.ts),
    // and REQUESTS_REFUSED, which names no user: its forwarded address is asserted below ("REQUESTS_REFUSED: …").
    // A new type must be added here with its client (or a reason why it has none).
    assert.deepEqual(
      AUDIT_EVENT_TYPES.filter((type) => !covered.has(type)),
      ['SESSION_EXPIRED', 'KEY_ROTATED', 'REQUESTS_REFUSED'],
    );
  });
});

describe('audit events record the client (e2e, no proxy)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ TRUST_PROXY: 'false' });
  });
  after(async () => {
    await t.close();
  });

  it("LOGIN records the socket's address, not a forged X-Forwarded-For", async () => {
    const user = await registerUser(t.http);
    const res = await t.http
      .post('/api/v1/auth/login')
      .set('X-Forwarded-For', '198.51.100.77')
      .set('User-Agent', 'socket-test/1')
      .send({ email: user.email, password: user.password });
    assert.equal(res.status, 200);
    const [event] = await auditRows(t.db, { userId: user.id, type: 'LOGIN' });
    assert.match(String(event.ip_address), /^(::ffff:)?127\.0\.0\.1$|^::1$/);
    assert.equal(event.user_agent, 'socket-test/1');
  });
});

async function metric(t: TestApp, name: string, labels: string): Promise<number> {
  const text = (await t.http.get('/metrics')).text;
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('REFRESH_FAILED and ACCESS_DENIED (e2e)', () => {
  // Two instances on one database: the bound holds across them.
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    const shared = { JWT_SECRET: randomBytes(48).toString('base64'), PASSWORD_PEPPER: randomBytes(48).toString('base64') };
    a = await createTestApp(shared);
    b = await createTestApp(shared);
  });
  after(async () => {
    await a.close();
    await b.close();
  });

  const refresh = (app: TestApp, refreshToken: string) =>
    app.http.post('/api/v1/auth/refresh').set('User-Agent', 'replayer/1').send({ refreshToken });
  const answer = (res: { status: number; body: unknown; headers: Record<string, unknown> }) => ({
    status: res.status,
    body: res.body,
    wwwAuthenticate: res.headers['www-authenticate'],
  });

  it("garbage writes no row of its own (only its address's share of the next REQUESTS_REFUSED), is counted by reason, and gets the same 401 as every other failure", async () => {
    await a.app.get(RefusedRequestsTally).flush();
    const [{ count: before }] = await a.db.query('SELECT count(*)::int AS count FROM audit_events');
    const unknownBefore = await metric(a, 'sessionary_refresh_failures_total', 'reason="unknown"');
    const malformedBefore = await metric(a, 'sessionary_refresh_failures_total', 'reason="malformed"');
    const unknown = await refresh(a, randomBytes(32).toString('base64url'));
    const malformed = await refresh(a, 'not-a-token');
    const [{ count: afterwards }] = await a.db.query('SELECT count(*)::int AS count FROM audit_events');
    assert.equal(afterwards, before);
    assert.equal(await metric(a, 'sessionary_refresh_failures_total', 'reason="unknown"'), unknownBefore + 1);
    assert.equal(await metric(a, 'sessionary_refresh_failures_total', 'reason="malformed"'), malformedBefore + 1);
    assert.equal(await a.app.get(RefusedRequestsTally).flush(), 1);
    const summary = (await a.db.query(`SELECT ip_address, metadata FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)`))[0];
    assert.deepEqual([summary.ip_address, summary.metadata.total, summary.metadata.refreshUnknown], ['127.0.0.1', 2, 2]);

    // An ended session's token: audited, yet answered exactly like garbage.
    const { tokens } = await registerAndLogin(a.http);
    await a.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens)).expect(204);
    const ended = await refresh(a, tokens.refreshToken);
    assert.equal(ended.status, 401);
    assert.deepEqual(answer(ended), answer(unknown));
    assert.deepEqual(answer(malformed), answer(unknown));
  });

  it('records REFRESH_FAILED once for an ended session however often it is replayed, on any instance', async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    await a.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens)).expect(204);
    const suppressedBefore = await metric(a, 'sessionary_audit_bounded_events_total', 'type="REFRESH_FAILED",outcome="suppressed"');
    // Sequential replays on one instance, then concurrent ones on both.
    for (let i = 0; i < 5; i++) assert.equal((await refresh(a, tokens.refreshToken)).status, 401);
    const parallel = await Promise.all(Array.from({ length: 10 }, (_, i) => refresh(i % 2 ? a : b, tokens.refreshToken)));
    assert.deepEqual(new Set(parallel.map((r) => r.status)), new Set([401]));

    const events = await auditRows(a.db, { userId: user.id, type: 'REFRESH_FAILED' });
    assert.equal(events.length, 1);
    assert.equal(events[0].session_id, tokens.sessionId);
    assert.deepEqual(events[0].metadata, { reason: 'ended', endReason: 'logout', presented: 'current' });
    assert.ok(events[0].ip_address);
    assert.equal(events[0].user_agent, 'replayer/1');
    assert.ok(!JSON.stringify(events[0]).includes(tokens.refreshToken));
    assert.ok((await metric(a, 'sessionary_audit_bounded_events_total', 'type="REFRESH_FAILED",outcome="suppressed"')) >= suppressedBefore + 4);
    // Nothing else changed: the session is as the logout left it.
    const [session] = await a.db.query('SELECT end_reason FROM sessions WHERE id = $1', [tokens.sessionId]);
    assert.equal(session.end_reason, 'logout');
  });

  it('records REFRESH_FAILED for an expired session, after ending it with its reason', async () => {
    for (const [reason, set] of [
      ['idle_timeout', `idle_expires_at = now() - interval '1 second'`],
      ['absolute_timeout', `idle_expires_at = now() - interval '1 second', absolute_expires_at = now() - interval '1 second'`],
    ] as const) {
      const { user, tokens } = await registerAndLogin(a.http);
      await a.db.query(`UPDATE sessions SET ${set} WHERE id = $1`, [tokens.sessionId]);
      for (let i = 0; i < 3; i++) assert.equal((await refresh(a, tokens.refreshToken)).status, 401);
      const expired = await auditRows(a.db, { userId: user.id, type: 'SESSION_EXPIRED' });
      assert.deepEqual(
        expired.map((e) => e.metadata),
        [{ reason, detectedBy: 'request' }],
      );
      const failed = await auditRows(a.db, { userId: user.id, type: 'REFRESH_FAILED' });
      assert.deepEqual(
        failed.map((e) => [e.session_id, e.metadata]),
        [[tokens.sessionId, { reason, presented: 'current' }]],
        reason,
      );
      assert.equal(failed[0].user_agent, 'replayer/1');
    }
  });

  it('records REFRESH_FAILED for an expired refresh token of a still active session', async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    await a.db.query(`UPDATE sessions SET refresh_expires_at = now() - interval '1 second' WHERE id = $1`, [tokens.sessionId]);
    assert.equal((await refresh(a, tokens.refreshToken)).status, 401);
    const failed = await auditRows(a.db, { userId: user.id, type: 'REFRESH_FAILED' });
    assert.deepEqual(
      failed.map((e) => e.metadata),
      [{ reason: 'refresh_expired', presented: 'current' }],
    );
    // The session itself still works.
    assert.equal((await a.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).status, 200);
  });

  it('keeps reuse detection: a rotated-out token ends an active session with REFRESH_TOKEN_REUSE, later replays are bounded REFRESH_FAILED', async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    await refresh(a, tokens.refreshToken).expect(200);
    for (let i = 0; i < 4; i++) assert.equal((await refresh(i % 2 ? b : a, tokens.refreshToken)).status, 401);
    const events = await auditRows(a.db, { userId: user.id });
    assert.deepEqual(
      events.filter((e) => e.type === 'REFRESH_TOKEN_REUSE' || e.type === 'REFRESH_FAILED').map((e) => [e.type, e.metadata]),
      [
        ['REFRESH_TOKEN_REUSE', { reason: 'refresh_token_reuse' }],
        ['REFRESH_FAILED', { reason: 'ended', endReason: 'refresh_token_reuse', presented: 'rotated' }],
      ],
    );
  });

  it('records ACCESS_DENIED for a user on an admin route, once per session and route within the window, with the same 403', async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    const other = await registerUser(a.http);
    const answers = [];
    for (let i = 0; i < 4; i++) {
      const res = await (i % 2 ? b : a).http.get('/api/v1/admin/audit?limit=5').set('Authorization', bearer(tokens)).set('User-Agent', 'prober/1');
      answers.push(answer(res));
    }
    for (let i = 0; i < 3; i++) {
      const res = await a.http.get(`/api/v1/admin/users/${other.id}/sessions`).set('Authorization', bearer(tokens)).set('User-Agent', 'prober/1');
      answers.push(answer(res));
    }
    for (const x of answers)
      assert.deepEqual(x, { status: 403, body: { statusCode: 403, error: 'Forbidden', message: 'Insufficient role' }, wwwAuthenticate: undefined });

    const events = await auditRows(a.db, { userId: user.id, type: 'ACCESS_DENIED' });
    assert.deepEqual(
      events.map((e) => [e.session_id, e.user_agent, e.metadata]),
      [
        [tokens.sessionId, 'prober/1', { route: '/api/v1/admin/audit', method: 'GET', requiredRole: 'admin', role: 'user' }],
        [tokens.sessionId, 'prober/1', { route: '/api/v1/admin/users/:id/sessions', method: 'GET', requiredRole: 'admin', role: 'user' }],
      ],
    );
    assert.ok(events.every((e) => e.ip_address));
    assert.ok(!JSON.stringify(events).includes(other.id), 'the raw URL (with its ids) is not recorded');

    // Another session of the same user is another key; an admin is not refused at all.
    const second = await a.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password }).expect(200);
    await a.http.get('/api/v1/admin/audit').set('Authorization', bearer(second.body)).expect(403);
    assert.equal((await auditRows(a.db, { userId: user.id, type: 'ACCESS_DENIED' })).length, 3);
    await a.app.get(UsersService).setRole(user.email, 'admin', 'test');
    // A new session (not in any instance's cache, which learns of the role change by NOTIFY).
    const promoted = await a.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password }).expect(200);
    await a.http.get('/api/v1/admin/audit').set('Authorization', bearer(promoted.body)).expect(200);
    assert.equal((await auditRows(a.db, { userId: user.id, type: 'ACCESS_DENIED' })).length, 3);
  });

  it("records ACCESS_DENIED when a user tries to end a session that is not theirs, alike for someone else's and for none, with the same 404; none for their own ended one", async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    const victim = await registerAndLogin(a.http);
    const end = (app: TestApp, session: Tokens, id: string) =>
      app.http.delete(`/api/v1/sessions/${id}`).set('Authorization', bearer(session)).set('User-Agent', 'prober/1');
    const notFound = { status: 404, body: { statusCode: 404, error: 'Not Found', message: 'Session not found' }, wwwAuthenticate: undefined };

    // Someone else's, twice (the second inside the window), from each instance.
    assert.deepEqual(answer(await end(a, tokens, victim.tokens.sessionId)), notFound);
    assert.deepEqual(answer(await end(b, tokens, victim.tokens.sessionId)), notFound);
    // No session's, from a second session of the same user (another key).
    const second = await login(a.http, user);
    const unknown = randomUUID();
    assert.deepEqual(answer(await end(a, second, unknown)), notFound);
    // One of their own, ended already: 204, then the same 404, and no event.
    const third = await login(a.http, user);
    await end(a, tokens, third.sessionId).expect(204);
    assert.deepEqual(answer(await end(a, second, third.sessionId)), notFound);

    const events = await auditRows(a.db, { userId: user.id, type: 'ACCESS_DENIED' });
    assert.deepEqual(
      events.map((e) => [e.session_id, e.user_agent, e.metadata]),
      [
        [tokens.sessionId, 'prober/1', { route: '/api/v1/sessions/:id', method: 'DELETE', targetSessionId: victim.tokens.sessionId }],
        [second.sessionId, 'prober/1', { route: '/api/v1/sessions/:id', method: 'DELETE', targetSessionId: unknown }],
      ],
      'one per session within the window; nothing tells the two apart but the id the user sent',
    );
    assert.ok(events.every((e) => e.ip_address));
    assert.deepEqual(await auditRows(a.db, { userId: victim.user.id, type: 'ACCESS_DENIED' }), []);
    // The victim's session is untouched.
    await a.http.get('/api/v1/users/me').set('Authorization', bearer(victim.tokens)).expect(200);
  });

  it("the window's query reads the partial index of the bounded types, under a generic plan too", async () => {
    // The index of migration 1765800000000, in each month's partition: with `type = $2` alone a
    // generic plan (a prepared statement's, e.g. behind a pooler) could not use it.
    const children: string[] = (
      await a.db.query(
        `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '"IDX_audit_events_bounded"'::regclass`,
      )
    ).map((r: { relname: string }) => r.relname);
    assert.ok(children.length > 0);
    for (const type of BOUNDED_EVENT_TYPES) {
      const plan = await a.db.transaction(async (em) => {
        await em.query('SET LOCAL plan_cache_mode = force_generic_plan');
        await em.query('SET LOCAL enable_seqscan = off');
        await em.query(`PREPARE bounded_window(uuid, text, int, text, text) AS ${BOUNDED_WINDOW_QUERY}`);
        try {
          const [row] = await em.query(`EXPLAIN (FORMAT JSON) EXECUTE bounded_window('${randomUUID()}', '${type}', 60, NULL, NULL)`);
          return JSON.stringify(row['QUERY PLAN']);
        } finally {
          await em.query('DEALLOCATE bounded_window');
        }
      });
      assert.ok(
        children.some((name) => plan.includes(`"Index Name":"${name}"`)),
        plan,
      );
    }
  });

  it('both types are in the OpenAPI enum and in the admin filter', async () => {
    const doc = (await a.http.get('/docs-json')).body;
    const schemas = JSON.stringify(doc.components?.schemas ?? {}) + JSON.stringify(doc.paths);
    for (const type of ['REFRESH_FAILED', 'ACCESS_DENIED']) assert.ok(schemas.includes(`"${type}"`), type);
    const admin = await registerAndLogin(a.http);
    await a.app.get(UsersService).setRole(admin.user.email, 'admin', 'test');
    const page = await a.http.get('/api/v1/admin/audit?type=ACCESS_DENIED&limit=100').set('Authorization', bearer(admin.tokens));
    assert.equal(page.status, 200);
    assert.ok(page.body.items.length >= 1);
    assert.ok(page.body.items.every((e: { type: string; ipAddress: string | null }) => e.type === 'ACCESS_DENIED' && e.ipAddress));
  });
});

describe('the refusal window ends (e2e, AUDIT_REFUSAL_WINDOW=1)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ AUDIT_REFUSAL_WINDOW: '1' });
  });
  after(async () => {
    await t.close();
  });

  it('records one REFRESH_FAILED and one ACCESS_DENIED per window, not one ever', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    const other = await login(t.http, user);
    await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens)).expect(204);
    const burst = async () => {
      for (let i = 0; i < 3; i++) {
        await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken }).expect(401);
        await t.http.get('/api/v1/admin/audit').set('Authorization', bearer(other)).expect(403);
      }
    };
    await burst();
    const count = async (type: string) => (await auditRows(t.db, { userId: user.id, type })).length;
    assert.deepEqual([await count('REFRESH_FAILED'), await count('ACCESS_DENIED')], [1, 1]);
    await sleep(1100);
    await burst();
    assert.deepEqual([await count('REFRESH_FAILED'), await count('ACCESS_DENIED')], [2, 2]);
  });
});

describe('REQUESTS_REFUSED: refusals that name no account, summed per client address (e2e, TRUST_PROXY)', () => {
  let t: TestApp;
  // Rate-limited past 8 requests a minute per address, to provoke 429s.
  before(async () => {
    t = await createTestApp({ TRUST_PROXY: 'true', RATE_LIMIT_PER_MINUTE: '8' });
  });
  after(async () => {
    await t.close();
  });
  const tally = () => t.app.get(RefusedRequestsTally);
  const from = <T extends { set(h: string, v: string): T }>(req: T, ip: string) => req.set('X-Forwarded-For', ip).set('User-Agent', 'refusal-test');
  const summaries = async (afterSeq: string) =>
    (await t.db.query(`SELECT * FROM audit_events WHERE type = 'REQUESTS_REFUSED' AND seq > $1 ORDER BY seq`, [afterSeq])) as Array<
      AuditRow & { seq: string; metadata: Record<string, unknown> }
    >;
  const newestSeq = async () => (await t.db.query(`SELECT coalesce(max(seq), 0)::text AS seq FROM audit_events`))[0].seq as string;

  it('writes the refusals counted after its last flush before shutdown, once the HTTP server has closed', async () => {
    const closing = await createTestApp();
    try {
      const seen = (await closing.db.query(`SELECT coalesce(max(seq), 0)::text AS seq FROM audit_events`))[0].seq as string;
      const refusals = closing.app.get(RefusedRequestsTally);
      // Nest's order at shutdown: this hook, then the HTTP server closes (a request answered
      // meanwhile still counts), then onApplicationShutdown, then the database.
      await refusals.beforeApplicationShutdown();
      refusals.count('198.51.100.66', 'invalidInput');
      await refusals.onApplicationShutdown();
      const written = await closing.db.query(`SELECT ip_address, metadata FROM audit_events WHERE type = 'REQUESTS_REFUSED' AND seq > $1`, [seen]);
      assert.equal(written.length, 1, JSON.stringify(written));
      assert.equal(written[0].ip_address, '198.51.100.66');
      assert.equal(written[0].metadata.invalidInput, 1);
    } finally {
      await closing.app.close().catch(() => undefined);
    }
  });

  it('sums refused bearer tokens, unknown refresh tokens, 400, 413, 415 and 429 per forwarded address into one event each, not expiries or known sessions', async () => {
    const seen = await newestSeq();
    const [prober, limited, ordinary] = ['198.51.100.7', '198.51.100.8', '198.51.100.9'];
    // The prober: six refusals of five kinds.
    const forged = `${Buffer.from('{"alg":"HS256","typ":"at+jwt","kid":"nope"}').toString('base64url')}.${Buffer.from('{"sub":"x"}').toString('base64url')}.c2ln`;
    await from(t.http.get('/api/v1/users/me'), prober).set('Authorization', 'Bearer not-a-token').expect(401);
    await from(t.http.get('/api/v1/users/me'), prober).set('Authorization', `Bearer ${forged}`).expect(401);
    await from(t.http.post('/api/v1/auth/refresh'), prober)
      .send({ refreshToken: randomBytes(32).toString('base64url') })
      .expect(401);
    await from(t.http.post('/api/v1/auth/register'), prober).send({ email: 'not-an-email' }).expect(400);
    await from(t.http.post('/api/v1/auth/login'), prober).set('Content-Type', 'text/plain').send('hello').expect(415);
    await from(t.http.post('/api/v1/auth/login'), prober)
      .send({ email: 'a@example.com', password: 'x'.repeat(20_000) })
      .expect(413);
    // An ordinary client: a token of a session it ended, a refresh of that session
    // (REFRESH_FAILED, which names it), an expired token, no token at all: none of it a prober's.
    const user = await registerUser(t.http);
    const res = await from(t.http.post('/api/v1/auth/login'), ordinary).send({ email: user.email, password: user.password }).expect(200);
    const tokens = res.body as Tokens;
    // Valid for a second (issued as if its session's absolute deadline had passed).
    const { token: shortLived } = await t.app
      .get(AccessTokenService)
      .issue({ id: tokens.sessionId, userId: user.id, authTime: new Date(), absoluteExpiresAt: new Date(Date.now() - 10_000) } as SessionEntity);
    await from(t.http.post('/api/v1/auth/logout'), ordinary).set('Authorization', bearer(tokens)).expect(204);
    await from(t.http.get('/api/v1/users/me'), ordinary).set('Authorization', bearer(tokens)).expect(401);
    await from(t.http.post('/api/v1/auth/refresh'), ordinary).send({ refreshToken: tokens.refreshToken }).expect(401);
    await sleep(2100);
    await from(t.http.get('/api/v1/users/me'), ordinary).set('Authorization', `Bearer ${shortLived}`).expect(401);
    await from(t.http.get('/api/v1/users/me'), ordinary).expect(401);
    assert.equal((await auditRows(t.db, { sessionId: tokens.sessionId, type: 'REFRESH_FAILED' })).length, 1);
    // Held back: the ninth and tenth requests of a minute get 429.
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push((await from(t.http.get('/api/v1/users/me'), limited)).status);
    assert.deepEqual(statuses, [...Array<number>(8).fill(401), 429, 429]);

    // Counted in /metrics as they come, by kind.
    const metrics = (await t.http.get('/metrics').expect(200)).text;
    const refusedMetric = (kind: string) =>
      Number(new RegExp(`^sessionary_requests_refused_total\\{kind="${kind}"\\} (\\d+)$`, 'm').exec(metrics)?.[1]);
    assert.deepEqual(
      ['bearerRefused', 'refreshUnknown', 'invalidInput', 'bodyTooLarge', 'unsupportedMediaType', 'rateLimited'].map(refusedMetric),
      [2, 1, 1, 1, 1, 2],
    );

    assert.equal(await tally().flush(), 2, 'one event for each address with refusals');
    const rows = await summaries(seen);
    const byIp = new Map(rows.map((r) => [r.ip_address, r]));
    assert.deepEqual([...byIp.keys()].sort(), [prober, limited]);
    assert.deepEqual(pickCounts(byIp.get(prober)!.metadata), {
      total: 6,
      bearerRefused: 2,
      refreshUnknown: 1,
      invalidInput: 1,
      bodyTooLarge: 1,
      unsupportedMediaType: 1,
    });
    assert.deepEqual(pickCounts(byIp.get(limited)!.metadata), { total: 2, rateLimited: 2 });
    for (const r of rows) {
      assert.deepEqual([r.user_id, r.session_id, r.user_agent], [null, null, null]);
      const { since, until } = r.metadata as { since: string; until: string };
      assert.ok(Date.parse(since) <= Date.parse(until) && Date.parse(until) <= Date.now(), `${since} .. ${until}`);
    }
    // Nothing refused since: nothing written.
    assert.equal(await tally().flush(), 0);
    assert.equal((await summaries(rows[rows.length - 1].seq)).length, 0);
    // The admin's list filters them by type, and the log still verifies.
    const admin = await registerUser(t.http);
    await t.app.get(UsersService).setRole(admin.email, 'admin', 'cli');
    const adminTokens = await login(t.http, admin);
    const page = await t.http.get('/api/v1/admin/audit?type=REQUESTS_REFUSED&limit=100').set('Authorization', bearer(adminTokens)).expect(200);
    assert.ok(page.body.items.some((e: { ipAddress: string }) => e.ipAddress === prober));
    const verified = await t.http.get('/api/v1/admin/audit/verify').set('Authorization', bearer(adminTokens)).expect(200);
    assert.equal(verified.body.ok, true, JSON.stringify(verified.body));
  });

  it('writes the most refused addresses one by one and the others together, so many addresses cannot flood the log', async () => {
    const seen = await newestSeq();
    tally().maxEventsPerInterval = 2;
    try {
      const refusals = { '192.0.2.1': 3, '192.0.2.2': 2, '192.0.2.3': 1, '192.0.2.4': 1 };
      for (const [ip, n] of Object.entries(refusals)) {
        for (let i = 0; i < n; i++) await from(t.http.get('/api/v1/users/me'), ip).set('Authorization', 'Bearer garbage').expect(401);
      }
      assert.equal(await tally().flush(), 3);
      const rows = await summaries(seen);
      assert.deepEqual(
        rows.map((r) => [r.ip_address, pickCounts(r.metadata)]),
        [
          ['192.0.2.1', { total: 3, bearerRefused: 3 }],
          ['192.0.2.2', { total: 2, bearerRefused: 2 }],
          [null, { total: 2, bearerRefused: 2 }],
        ],
      );
      assert.deepEqual([rows[2].metadata.ips, rows[2].metadata.ipsComplete], [2, true]);
    } finally {
      tally().maxEventsPerInterval = 100;
    }
  });

  it('writes what is left when the app shuts down', async () => {
    const other = await createTestApp({ TRUST_PROXY: 'true' });
    const seen = await newestSeq();
    await from(other.http.get('/api/v1/users/me'), '192.0.2.99').set('Authorization', 'Bearer garbage').expect(401);
    await other.close();
    const rows = await summaries(seen);
    assert.deepEqual(
      rows.map((r) => [r.ip_address, pickCounts(r.metadata)]),
      [['192.0.2.99', { total: 1, bearerRefused: 1 }]],
    );
  });
});

/** The counts of a REQUESTS_REFUSED event's metadata (without its interval). */
function pickCounts(metadata: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(metadata).filter(([k]) => !['since', 'until', 'ips', 'ipsComplete'].includes(k)));
}
