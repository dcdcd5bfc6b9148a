import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { auditRows, sessionRow } from './helpers/db';
import { bearer, registerAndLogin, sleep } from './helpers/factories';
import { createTestApp, TestApp } from './helpers/test-app';

// Short TTLs: idle 2 s, absolute 5 s. Activity is written at most every 200 ms (a tenth of idle).
describe('session expiry (e2e, short TTLs)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ SESSION_IDLE_TTL: '2', SESSION_ABSOLUTE_TTL: '5', ACCESS_TOKEN_TTL: '60' });
  });
  after(async () => {
    await t.close();
  });

  it('ends an idle session on its next request with reason idle_timeout and one SESSION_EXPIRED event', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).status, 200);
    await sleep(2300);
    const res = await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens));
    assert.equal(res.status, 401);
    // A second request and a refresh find it ended; neither records a second event.
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).status, 401);
    assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken })).status, 401);
    const row = await sessionRow(t.db, tokens.sessionId);
    assert.equal(row!.end_reason, 'idle_timeout');
    assert.equal(row!.ended_at!.getTime(), row!.idle_expires_at.getTime());
    const events = await auditRows(t.db, { userId: user.id, type: 'SESSION_EXPIRED' });
    assert.equal(events.length, 1);
    assert.deepEqual(events[0].metadata, { reason: 'idle_timeout', detectedBy: 'request' });
  });

  it('keeps an active session alive past the idle timeout, then ends it at the absolute deadline', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    const started = Date.now();
    let lastOk = started;
    let status = 200;
    // A request every 250 ms: each extends the idle deadline by 2 s, so only the absolute
    // deadline (5 s) can end the session.
    while (Date.now() - started < 8000) {
      status = (await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).status;
      if (status !== 200) break;
      lastOk = Date.now();
      await sleep(250);
    }
    assert.equal(status, 401);
    assert.ok(lastOk - started > 3000, `stayed alive ${lastOk - started} ms, beyond the 2 s idle timeout`);
    // The access token never outlives the absolute deadline (its exp is capped, in whole
    // seconds, at or before it). Once the deadline has passed, the refresh token finds the
    // session due and ends it.
    const { absolute_expires_at: deadline } = (await sessionRow(t.db, tokens.sessionId))!;
    assert.ok(Date.now() > deadline.getTime() - 1000);
    await sleep(Math.max(0, deadline.getTime() - Date.now() + 100));
    assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken })).status, 401);
    const row = await sessionRow(t.db, tokens.sessionId);
    assert.equal(row!.end_reason, 'absolute_timeout');
    const events = await auditRows(t.db, { userId: user.id, type: 'SESSION_EXPIRED' });
    assert.equal(events.length, 1);
    assert.equal(events[0].metadata.reason, 'absolute_timeout');
  });

  it('refresh extends the idle deadline but never past the absolute one', async () => {
    const { tokens } = await registerAndLogin(t.http);
    const before = await sessionRow(t.db, tokens.sessionId);
    await sleep(1000);
    const res = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
    assert.equal(res.status, 200);
    const mid = await sessionRow(t.db, tokens.sessionId);
    assert.ok(mid!.idle_expires_at > before!.idle_expires_at);
    assert.equal(mid!.absolute_expires_at.getTime(), before!.absolute_expires_at.getTime());
    // Refreshed until the idle timeout (2 s) from now passes the absolute deadline (+5 s): each
    // refresh 250 ms after the last, well within the idle timeout however slow a busy machine
    // answers (fixed steps of 1.5 s and 1 s left half a second of margin), and the last one's
    // idle deadline is capped at the absolute one.
    let refreshToken = res.body.refreshToken as string;
    const cappedFrom = mid!.absolute_expires_at.getTime() - 2000 + 100;
    for (let sentAt = 0; sentAt < cappedFrom;) {
      await sleep(250);
      sentAt = Date.now();
      const next = await t.http.post('/api/v1/auth/refresh').send({ refreshToken });
      assert.equal(next.status, 200);
      refreshToken = next.body.refreshToken as string;
    }
    const late = await sessionRow(t.db, tokens.sessionId);
    assert.equal(late!.idle_expires_at.getTime(), late!.absolute_expires_at.getTime());
  });
});
