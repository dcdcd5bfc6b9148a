import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { bearer, login, registerAndLogin, registerUser } from './helpers/factories';
import { createTestApp, TestApp } from './helpers/test-app';

describe('audit log (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => {
    await t.close();
  });

  it("lists the caller's own events newest first, without secrets", async () => {
    const started = Date.now();
    const user = await registerUser(t.http);
    await t.http.post('/api/v1/auth/login').send({ email: user.email, password: 'wrong-password-here' }).expect(401);
    const tokens = await login(t.http, user);
    const refreshed = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken }).expect(200);
    const other = await registerAndLogin(t.http);

    const res = await t.http.get('/api/v1/audit').set('Authorization', bearer(refreshed.body));
    assert.equal(res.status, 200);
    assert.deepEqual(
      res.body.items.map((e: { type: string }) => e.type),
      ['TOKEN_REFRESH', 'LOGIN', 'LOGIN_FAILED', 'REGISTER'],
    );
    assert.equal(res.body.nextCursor, null);
    assert.deepEqual(Object.keys(res.body.items[0]).sort(), ['createdAt', 'id', 'ipAddress', 'metadata', 'sessionId', 'type', 'userAgent']);
    // ISO-8601 in UTC (ASVS 16.2.2), the database's clock, within this test's time (a second's slack each side for the clocks).
    for (const { createdAt } of res.body.items as Array<{ createdAt: string }>) {
      assert.match(createdAt, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
      const at = Date.parse(createdAt);
      assert.ok(at >= started - 1000 && at <= Date.now() + 1000, `${createdAt} is not within the test's time`);
    }
    const text = JSON.stringify(res.body);
    for (const secret of [user.password, tokens.refreshToken, tokens.accessToken, refreshed.body.refreshToken, other.user.id]) {
      assert.ok(!text.includes(secret));
    }
  });

  it('filters by type and time, and pages with an opaque cursor', async () => {
    const user = await registerUser(t.http);
    const sessions = [];
    for (let i = 0; i < 5; i++) sessions.push(await login(t.http, user));
    const auth = bearer(sessions[4]);

    const logins = await t.http.get('/api/v1/audit?type=LOGIN').set('Authorization', auth);
    assert.equal(logins.body.items.length, 5);
    assert.ok(logins.body.items.every((e: { type: string }) => e.type === 'LOGIN'));
    assert.equal(logins.body.items[0].sessionId, sessions[4].sessionId);

    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const url: string = `/api/v1/audit?type=LOGIN&limit=2${cursor ? `&cursor=${cursor}` : ''}`;
      const page = await t.http.get(url).set('Authorization', auth);
      assert.equal(page.status, 200);
      assert.ok(page.body.items.length <= 2);
      seen.push(...page.body.items.map((e: { sessionId: string }) => e.sessionId));
      cursor = page.body.nextCursor;
    } while (cursor);
    assert.deepEqual(seen, sessions.map((s) => s.sessionId).reverse());

    const future = await t.http.get(`/api/v1/audit?from=${new Date(Date.now() + 60_000).toISOString()}`).set('Authorization', auth);
    assert.deepEqual(future.body.items, []);
    const past = await t.http.get(`/api/v1/audit?to=2000-01-01T00:00:00Z`).set('Authorization', auth);
    assert.deepEqual(past.body.items, []);
  });

  it('answers 400 for a bad filter or cursor and 401 without a session', async () => {
    const { tokens } = await registerAndLogin(t.http);
    for (const query of [
      'limit=0',
      'limit=101',
      'limit=abc',
      'type=NOPE',
      'from=yesterday',
      'cursor=%27%3B--',
      'cursor=YTEuMA',
      'cursor=', // empty: not a cursor we issued (it read the first page again)
      'type=',
      'from=',
      'limit=',
      'from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z',
      'extra=1',
    ]) {
      const res = await t.http.get(`/api/v1/audit?${query}`).set('Authorization', bearer(tokens));
      assert.equal(res.status, 400, query);
    }
    assert.equal((await t.http.get('/api/v1/audit')).status, 401);
  });
});
