import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Client } from 'pg';
import { SessionsService } from '../src/sessions/sessions.service';
import { auditRows, sessionRow } from './helpers/db';
import { bearer, login, registerAndLogin, registerUser, sleep, Tokens } from './helpers/factories';
import { metric } from './helpers/service-process';
import { SqlCounter } from './helpers/sql-counter';
import { CapturingLogger } from './helpers/capturing-logger';
import { createTestApp, freshDatabase, TestApp } from './helpers/test-app';

/** Polls `probe` until it is true, at most `timeoutMs`; answers whether it became true. */
async function until(probe: () => boolean | Promise<boolean>, timeoutMs = 3000, everyMs = 2): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await probe()) return true;
    await sleep(everyMs);
  }
  return probe();
}

// Instances of one deployment share their secrets (and passport's strategy is one per process).
const SHARED = { JWT_SECRET: randomBytes(48).toString('base64'), PASSWORD_PEPPER: randomBytes(48).toString('base64') };

const whoami = (t: TestApp, tokens: Tokens) => t.http.get('/api/v1/auth/session').set('Authorization', bearer(tokens));
const checks = (t: TestApp) => t.app.get(SessionsService).cacheState().checks;

describe('session cache kept exact by LISTEN/NOTIFY (e2e, two instances on one database)', () => {
  let a: TestApp;
  let b: TestApp;
  const sqlCounter = new SqlCounter();
  before(async () => {
    [a, b] = [await createTestApp(SHARED), await createTestApp(SHARED)];
    sqlCounter.start();
    for (const t of [a, b]) assert.ok(await until(() => t.app.get(SessionsService).cacheState().listening), 'listening');
  });
  after(async () => {
    sqlCounter.stop();
    await Promise.all([a.close(), b.close()]);
  });

  it('GET /auth/session answers who the bearer is and until when; 401 without a session', async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    const res = await whoami(a, tokens);
    assert.equal(res.status, 200);
    assert.equal(res.headers['cache-control'], 'no-store');
    const row = await sessionRow(a.db, tokens.sessionId);
    assert.deepEqual(res.body, {
      userId: user.id,
      sessionId: tokens.sessionId,
      role: 'user',
      expiresAt: row!.idle_expires_at.toISOString(),
      absoluteExpiresAt: row!.absolute_expires_at.toISOString(),
    });
    assert.equal((await a.http.get('/api/v1/auth/session')).status, 401);
    assert.equal((await a.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens))).status, 204);
    assert.equal((await whoami(a, tokens)).status, 401);
    const doc = (await a.http.get('/docs-json')).body as { paths: Record<string, Record<string, unknown>> };
    assert.ok(doc.paths['/api/v1/auth/session']?.get, 'documented in OpenAPI');
  });

  it('in steady state whoami runs no SQL and /users/me one statement per request', async () => {
    const { tokens } = await registerAndLogin(a.http);
    assert.equal((await whoami(a, tokens)).status, 200); // fills the cache
    const fromCache = checks(a).cache;
    const whoamiStatements = await sqlCounter.during(async () => {
      for (let i = 0; i < 100; i++) assert.equal((await whoami(a, tokens)).status, 200);
    });
    assert.equal(whoamiStatements, 0);
    assert.equal(checks(a).cache - fromCache, 100);
    // /metrics shows the same counts (read from the service when scraped).
    const { cache, database } = checks(a);
    const scraped = (await a.http.get('/metrics')).text;
    assert.equal(metric(scraped, 'sessionary_session_checks_total{source="cache"}'), cache);
    assert.equal(metric(scraped, 'sessionary_session_checks_total{source="database"}'), database);
    const meStatements = await sqlCounter.during(async () => {
      for (let i = 0; i < 50; i++) assert.equal((await a.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).status, 200);
    });
    assert.equal(meStatements, 50);
  });

  it("writes no activity per request in a session's last minute, when its idle deadline has reached the absolute one", async () => {
    const { tokens } = await registerAndLogin(a.http);
    // Twenty seconds left, idle and absolute alike: no activity can move the deadline.
    await a.db.query(
      `UPDATE sessions SET absolute_expires_at = now() + interval '20 seconds', idle_expires_at = now() + interval '20 seconds' WHERE id = $1`,
      [tokens.sessionId],
    );
    assert.ok(
      await until(async () => (await whoami(a, tokens)).body.expiresAt === (await sessionRow(a.db, tokens.sessionId))!.idle_expires_at.toISOString()),
    );
    assert.equal((await whoami(a, tokens)).status, 200); // cached, with those deadlines
    const statements = await sqlCounter.during(async () => {
      for (let i = 0; i < 20; i++) {
        assert.equal((await whoami(a, tokens)).status, 200);
        await sleep(5); // a flush asked for by a request runs in the next turn of the event loop
      }
    });
    // Until 0.23.0 each of these requests was "urgent" activity, written at once: 20 UPDATEs.
    assert.equal(statements, 0);
  });

  it('a session ended through one instance is refused by the other, which had it cached', async () => {
    const { user } = await registerAndLogin(a.http);
    const sessions = [await login(a.http, user), await login(a.http, user), await login(a.http, user)];
    for (const s of sessions) assert.equal((await whoami(b, s)).status, 200);
    const [loggedOut, revoked, other] = sessions;

    assert.equal((await a.http.post('/api/v1/auth/logout').set('Authorization', bearer(loggedOut))).status, 204);
    assert.ok(await until(async () => (await whoami(b, loggedOut)).status === 401), 'logout reached B');
    assert.equal((await a.http.delete(`/api/v1/sessions/${revoked.sessionId}`).set('Authorization', bearer(other))).status, 204);
    assert.ok(await until(async () => (await whoami(b, revoked)).status === 401), 'revocation reached B');
    // Once refused, always refused, and the survivor is unaffected.
    for (let i = 0; i < 20; i++) {
      assert.equal((await whoami(b, loggedOut)).status, 401);
      assert.equal((await whoami(b, revoked)).status, 401);
    }
    assert.equal((await whoami(b, other)).status, 200);
  });

  it('a session whose id an operator changed is refused under its old id by the instances that had it cached', async () => {
    const { tokens } = await registerAndLogin(a.http);
    for (const t of [a, b]) assert.equal((await whoami(t, tokens)).status, 200); // cached on both
    await a.db.query(`UPDATE sessions SET id = gen_random_uuid() WHERE id = $1`, [tokens.sessionId]);
    // No row has the old id now: until 0.23.0 only the new id was notified, and both answered 200 until the entry's TTL.
    for (const t of [a, b]) assert.ok(await until(async () => (await whoami(t, tokens)).status === 401), 'the old id is refused');
  });

  it('a role change reaches the other instance without a restart or a new login', async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    assert.equal((await whoami(b, tokens)).body.role, 'user');
    await a.db.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [user.id]);
    assert.ok(await until(async () => (await whoami(b, tokens)).body.role === 'admin'), 'role reached B');
    assert.equal((await b.http.get(`/api/v1/admin/users/${user.id}/sessions`).set('Authorization', bearer(tokens))).status, 200);
  });

  it('a session whose absolute deadline passed while its access token is valid is refused and ends with absolute_timeout', async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    assert.equal((await whoami(b, tokens)).status, 200); // cached on B with the old deadlines
    await a.db.query(
      `UPDATE sessions SET absolute_expires_at = now() - interval '1 second', idle_expires_at = now() - interval '1 second' WHERE id = $1`,
      [tokens.sessionId],
    );
    assert.ok(await until(async () => (await whoami(b, tokens)).status === 401), 'refused');
    const row = await sessionRow(a.db, tokens.sessionId);
    assert.equal(row!.end_reason, 'absolute_timeout');
    const events = await auditRows(a.db, { userId: user.id, type: 'SESSION_EXPIRED' });
    assert.deepEqual(
      events.map((e) => [e.session_id, e.metadata.reason]),
      [[tokens.sessionId, 'absolute_timeout']],
    );
  });

  it('a rolled-back change notifies nobody: the cached session keeps working without a query', async () => {
    const { tokens } = await registerAndLogin(a.http);
    assert.equal((await whoami(b, tokens)).status, 200);
    const runner = a.db.createQueryRunner();
    await runner.startTransaction();
    await runner.query(`UPDATE sessions SET ended_at = now(), end_reason = 'revoked' WHERE id = $1`, [tokens.sessionId]);
    await runner.rollbackTransaction();
    await runner.release();
    await sleep(50);
    const before = checks(b);
    assert.equal((await whoami(b, tokens)).status, 200);
    assert.deepEqual(checks(b), { cache: before.cache + 1, database: before.database });
  });

  it('losing the listening connection fails closed (the database decides) until it listens again', async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    const victim = await login(a.http, user);
    assert.equal((await whoami(b, tokens)).status, 200);
    assert.equal((await whoami(b, victim)).status, 200);
    const service = b.app.get(SessionsService);
    const oldPid = service.cacheState().listenerPid;
    assert.ok(oldPid);

    // Hold B's reconnection back for a while, so the state in between can be looked at.
    const connect = Client.prototype.connect;
    Client.prototype.connect = async function (this: Client & { connectionParameters: { application_name?: string } }) {
      if (this.connectionParameters.application_name?.startsWith('sessionary-listener')) await sleep(700);
      return (connect as unknown as () => Promise<void>).call(this);
    } as unknown as typeof Client.prototype.connect;
    try {
      await a.db.query('SELECT pg_terminate_backend($1)', [oldPid]);
      assert.ok(await until(() => !service.cacheState().listening, 3000, 1), 'B noticed the loss');
      // Not listening: nothing is answered from memory; a change made now, whose NOTIFY B
      // cannot hear, reaches B through the database.
      await a.db.query(`UPDATE sessions SET ended_at = now(), end_reason = 'revoked' WHERE id = $1`, [victim.sessionId]);
      const before = checks(b);
      assert.equal((await whoami(b, victim)).status, 401);
      assert.equal((await whoami(b, tokens)).status, 200);
      assert.deepEqual(checks(b), { cache: before.cache, database: before.database + 2 });
      assert.equal(service.cacheState().listening, false);
    } finally {
      Client.prototype.connect = connect;
    }
    assert.ok(await until(() => service.cacheState().listening, 5000, 10), 'B listens again');
    assert.notEqual(service.cacheState().listenerPid, oldPid);
    assert.equal((await whoami(b, victim)).status, 401);
    assert.equal((await whoami(b, tokens)).status, 200);
    // And notifications work again.
    assert.equal((await a.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens))).status, 204);
    assert.ok(await until(async () => (await whoami(b, tokens)).status === 401), 'logout reached B after the reconnect');
  });
});

describe('idle extension is batched and never lost across instances (e2e, short idle timeout)', () => {
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    const ttl = { ...SHARED, SESSION_IDLE_TTL: '3', SESSION_ABSOLUTE_TTL: '120', ACCESS_TOKEN_TTL: '120' };
    [a, b] = [await createTestApp(ttl), await createTestApp(ttl)];
  });
  after(async () => {
    await Promise.all([a.close(), b.close()]);
  });

  it('activity on one instance keeps the session alive on the other; idleness then ends it', async () => {
    const { user, tokens } = await registerAndLogin(a.http);
    assert.equal((await whoami(b, tokens)).status, 200); // B caches the first idle deadline
    // Six seconds (twice the idle timeout) of activity on A only.
    for (let i = 0; i < 12; i++) {
      assert.equal((await whoami(a, tokens)).status, 200, `request ${i} on A`);
      await sleep(500);
    }
    assert.equal((await whoami(b, tokens)).status, 200, 'B saw A’s activity in the database');
    const row = await sessionRow(a.db, tokens.sessionId);
    assert.equal(row!.ended_at, null);
    assert.ok(row!.last_seen_at.getTime() > Date.now() - 2000, 'the activity was written');

    await sleep(3500);
    assert.equal((await whoami(b, tokens)).status, 401);
    assert.equal((await sessionRow(a.db, tokens.sessionId))!.end_reason, 'idle_timeout');
    assert.equal((await auditRows(a.db, { userId: user.id, type: 'SESSION_EXPIRED' })).length, 1);
  });
});

describe('SESSION_CACHE_MAX=0: every check reads the database (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ ...SHARED, SESSION_CACHE_MAX: '0' });
  });
  after(async () => {
    await t.close();
  });

  it('answers from the database on each request and still refuses ended sessions at once', async () => {
    const user = await registerUser(t.http);
    const tokens = await login(t.http, user);
    const before = checks(t);
    for (let i = 0; i < 5; i++) assert.equal((await whoami(t, tokens)).status, 200);
    assert.deepEqual(checks(t), { cache: before.cache, database: before.database + 5 });
    const scraped = (await t.http.get('/metrics')).text;
    assert.equal(metric(scraped, 'sessionary_session_checks_total{source="cache"}'), 0);
    assert.equal(metric(scraped, 'sessionary_session_checks_total{source="database"}'), before.database + 5);
    assert.equal(t.app.get(SessionsService).cacheState().listening, false);
    assert.equal((await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens))).status, 204);
    assert.equal((await whoami(t, tokens)).status, 401);
  });
});

describe('DATABASE_LISTEN_URL naming another database: the cache is never trusted (e2e)', () => {
  let a: TestApp;
  let b: TestApp;
  const logs = new CapturingLogger();
  before(async () => {
    a = await createTestApp(SHARED);
    // B writes to this file's database and listens to another, where no change is ever notified.
    b = await createTestApp({ ...SHARED, DATABASE_LISTEN_URL: await freshDatabase() }, { logger: logs });
  });
  after(async () => {
    await Promise.all([a.close(), b.close()]);
  });

  it('checks every session in the database, so an ended one is refused at once, and says why it does not listen', async () => {
    const tokens = await registerAndLogin(a.http).then((r) => r.tokens);
    // Twice: a trusted cache would answer the second from memory.
    for (let i = 0; i < 2; i++) assert.equal((await whoami(b, tokens)).status, 200);
    assert.equal((await a.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens))).status, 204);
    assert.equal((await whoami(b, tokens)).status, 401, 'B heard nothing, and still refused the ended session');
    const lost = () =>
      logs.lines.find(
        (l) => l.level === 'warn' && /Not listening for session changes \(a NOTIFY sent through the service's pool did not arrive/.test(l.message),
      );
    assert.ok(await until(() => lost() !== undefined, 8000, 50), JSON.stringify(logs.lines.filter((l) => l.level !== 'log')));
    assert.match(lost()!.message, /DATABASE_LISTEN_URL\) must reach the database the service writes to/);
    assert.equal(b.app.get(SessionsService).cacheState().listening, false);
  });
});
