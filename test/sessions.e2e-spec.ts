import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { auditRows, sessionRow, untilBackend } from './helpers/db';
import { Client } from 'pg';
import { DataSource, QueryRunner } from 'typeorm';
import { SESSIONARY_DATA_SOURCE_TOKEN } from '../src/database/data-source-name';
import { SessionActivityBuffer } from '../src/sessions/session-activity';
import { SessionsService } from '../src/sessions/sessions.service';
import { UsersService } from '../src/users/users.service';
import { bearer, login, registerAndLogin, registerUser, sleep, Tokens } from './helpers/factories';
import { staleTokens } from './helpers/step-up';
import { createTestApp, TestApp } from './helpers/test-app';
import { counterKeyDigest } from '../src/common/counter-key-digest';

const FIREFOX_WINDOWS = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0';
const SAFARI_IPHONE =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1';

describe('my sessions (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => {
    await t.close();
  });

  it('lists my active sessions newest first, with device, IP, last seen and which one is current', async () => {
    const user = await registerUser(t.http);
    const older = await login(t.http, user, FIREFOX_WINDOWS);
    const ended = await login(t.http, user, 'ended-agent');
    const current = await login(t.http, user, SAFARI_IPHONE);
    await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(ended)).expect(204);
    const someoneElse = await registerAndLogin(t.http);

    const res = await t.http.get('/api/v1/sessions').set('Authorization', bearer(current));
    assert.equal(res.status, 200);
    assert.deepEqual(
      res.body.map((s: { id: string }) => s.id),
      [current.sessionId, older.sessionId],
    );
    const [mine, other] = res.body;
    assert.equal(mine.current, true);
    assert.equal(other.current, false);
    assert.deepEqual(Object.keys(mine).sort(), [
      'absoluteExpiresAt',
      'createdAt',
      'current',
      'device',
      'expiresAt',
      'id',
      'ipAddress',
      'lastSeenAt',
      'userAgent',
    ]);
    assert.deepEqual(mine.device, { browser: 'Safari 17', os: 'iOS 17.5', deviceType: 'mobile' });
    assert.deepEqual(other.device, { browser: 'Firefox 128', os: 'Windows 10', deviceType: 'desktop' });
    assert.equal(other.userAgent, FIREFOX_WINDOWS);
    assert.ok(mine.ipAddress);
    const row = await sessionRow(t.db, older.sessionId);
    assert.equal(other.expiresAt, row!.idle_expires_at.toISOString());
    assert.equal(other.absoluteExpiresAt, row!.absolute_expires_at.toISOString());
    assert.ok(!JSON.stringify(res.body).includes(someoneElse.tokens.sessionId));
  });

  it('revoking one of my sessions kills its access and refresh tokens at once', async () => {
    const user = await registerUser(t.http);
    const victim = await login(t.http, user);
    const me = await login(t.http, user);
    const res = await t.http.delete(`/api/v1/sessions/${victim.sessionId}`).set('Authorization', bearer(me));
    assert.equal(res.status, 204);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(victim))).status, 401);
    assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: victim.refreshToken })).status, 401);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(me))).status, 200);
    const row = await sessionRow(t.db, victim.sessionId);
    assert.equal(row!.end_reason, 'revoked');
    const events = await auditRows(t.db, { sessionId: victim.sessionId, type: 'SESSION_REVOKED' });
    assert.equal(events.length, 1);
    assert.deepEqual(events[0].metadata, { reason: 'revoked', bySessionId: me.sessionId });
  });

  it('revoking my current session is a logout', async () => {
    const { tokens } = await registerAndLogin(t.http);
    await t.http.delete(`/api/v1/sessions/${tokens.sessionId}`).set('Authorization', bearer(tokens)).expect(204);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).status, 401);
    assert.equal((await sessionRow(t.db, tokens.sessionId))!.end_reason, 'logout');
    assert.equal((await auditRows(t.db, { sessionId: tokens.sessionId, type: 'LOGOUT' })).length, 1);
  });

  it('takes a DELETE without a body as one, though it says Content-Type: application/json (as clients that set it on every request do)', async () => {
    const { tokens } = await registerAndLogin(t.http);
    // Content-Length: 0, as Python's requests sends it; until 0.24.2 a 400 "Body must be valid JSON".
    const res = await t.http
      .delete(`/api/v1/sessions/${tokens.sessionId}`)
      .set('Authorization', bearer(tokens))
      .set('Content-Type', 'application/json')
      .send('');
    assert.equal(res.status, 204, JSON.stringify(res.body));
    assert.equal((await sessionRow(t.db, tokens.sessionId))!.end_reason, 'logout');
    // A body that is there and not JSON is still refused.
    const other = await registerAndLogin(t.http);
    const blank = await t.http
      .delete(`/api/v1/sessions/${other.tokens.sessionId}`)
      .set('Authorization', bearer(other.tokens))
      .set('Content-Type', 'application/json')
      .send(' ');
    assert.equal(blank.status, 400);
    assert.equal((await sessionRow(t.db, other.tokens.sessionId))!.ended_at, null);
  });

  it('revoking my current session by its id in upper case is a logout too: no recent authentication asked', async () => {
    const { tokens } = await registerAndLogin(t.http);
    // Past the step-up window, which ending another session would need.
    const stale = await staleTokens(t, tokens);
    await t.http.delete(`/api/v1/sessions/${stale.sessionId.toUpperCase()}`).set('Authorization', bearer(stale)).expect(204);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(stale))).status, 401);
    assert.equal((await sessionRow(t.db, stale.sessionId))!.end_reason, 'logout');
    assert.equal((await auditRows(t.db, { sessionId: stale.sessionId, type: 'LOGOUT' })).length, 1);
    assert.equal((await auditRows(t.db, { sessionId: stale.sessionId, type: 'SESSION_REVOKED' })).length, 0);
  });

  it('ending my current session answers 401 when it was ended after the guard let the request in (a revocation won the race)', async () => {
    const { tokens } = await registerAndLogin(t.http);
    const sessions = t.app.get(SessionsService);
    const end = sessions.end.bind(sessions);
    // An admin's revocation commits between the guard's check and this request's own end.
    sessions.end = async (...args: Parameters<SessionsService['end']>) => {
      await t.db.query(`UPDATE sessions SET ended_at = now(), end_reason = 'revoked_by_admin' WHERE id = $1`, [tokens.sessionId]);
      return end(...args);
    };
    try {
      const res = await t.http.delete(`/api/v1/sessions/${tokens.sessionId}`).set('Authorization', bearer(tokens));
      assert.deepEqual(
        { status: res.status, body: res.body },
        { status: 401, body: { statusCode: 401, error: 'Unauthorized', message: 'Session is not active' } },
      );
      assert.match(res.headers['www-authenticate'], /error="invalid_token"/);
    } finally {
      sessions.end = end;
    }
    assert.equal((await sessionRow(t.db, tokens.sessionId))!.end_reason, 'revoked_by_admin');
    assert.equal((await auditRows(t.db, { sessionId: tokens.sessionId, type: 'LOGOUT' })).length, 0);
    assert.equal((await auditRows(t.db, { sessionId: tokens.sessionId, type: 'ACCESS_DENIED' })).length, 0);
  });

  it("answers the same 404 for someone else's, an unknown and an ended session, changing nothing", async () => {
    const me = await registerAndLogin(t.http);
    const other = await registerAndLogin(t.http);
    const mineEnded = await login(t.http, me.user);
    await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(mineEnded)).expect(204);
    const answers = [];
    for (const id of [other.tokens.sessionId, randomUUID(), mineEnded.sessionId]) {
      const res = await t.http.delete(`/api/v1/sessions/${id}`).set('Authorization', bearer(me.tokens));
      answers.push({ status: res.status, body: res.body });
    }
    assert.deepEqual(answers[0], { status: 404, body: { statusCode: 404, error: 'Not Found', message: 'Session not found' } });
    assert.deepEqual(answers[1], answers[0]);
    assert.deepEqual(answers[2], answers[0]);
    assert.equal((await sessionRow(t.db, other.tokens.sessionId))!.ended_at, null);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(other.tokens))).status, 200);
    assert.equal((await auditRows(t.db, { sessionId: other.tokens.sessionId, type: 'SESSION_REVOKED' })).length, 0);
  });

  it('answers 400 for a session id that is not a UUID', async () => {
    const { tokens } = await registerAndLogin(t.http);
    const res = await t.http.delete('/api/v1/sessions/not-a-uuid').set('Authorization', bearer(tokens));
    assert.equal(res.status, 400);
  });

  it("a session ended during its step-up's password check ends none of the others (a thief's, ended by the owner's password change)", async () => {
    const user = await registerUser(t.http);
    const thief = await login(t.http, user);
    const owner = await login(t.http, user);
    const users = t.app.get(UsersService);
    const verify = users.verifyCurrentPassword.bind(users);
    let checked = 0;
    // The owner's password change commits while the thief's request checks the old password.
    users.verifyCurrentPassword = async (...args: Parameters<UsersService['verifyCurrentPassword']>) => {
      await verify(...args);
      checked++;
      await t.db.query(`UPDATE sessions SET ended_at = now(), end_reason = 'password_changed' WHERE id = $1`, [thief.sessionId]);
    };
    try {
      const all = await t.http.delete('/api/v1/sessions').set('Authorization', bearer(thief)).send({ currentPassword: user.password });
      assert.equal(all.status, 401, JSON.stringify(all.body));
      assert.equal(all.body.message, 'Session is not active');
      await t.db.query(`UPDATE sessions SET ended_at = NULL, end_reason = NULL WHERE id = $1`, [thief.sessionId]);
      const one = await t.http
        .delete(`/api/v1/sessions/${owner.sessionId}`)
        .set('Authorization', bearer(thief))
        .send({ currentPassword: user.password });
      assert.equal(one.status, 401, JSON.stringify(one.body));
      assert.equal(checked, 2, 'both requests got past the guard to their password check');
    } finally {
      users.verifyCurrentPassword = verify;
    }
    assert.equal((await sessionRow(t.db, owner.sessionId))!.ended_at, null);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(owner))).status, 200);
    assert.equal((await auditRows(t.db, { sessionId: owner.sessionId, type: 'SESSION_REVOKED' })).length, 0);
  });

  it('revoking all others keeps the current session working and reports how many ended', async () => {
    const user = await registerUser(t.http);
    const others = [await login(t.http, user), await login(t.http, user), await login(t.http, user)];
    const me = await login(t.http, user);
    const stranger = await registerAndLogin(t.http);
    const res = await t.http.delete('/api/v1/sessions').set('Authorization', bearer(me));
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { revoked: 3 });
    for (const s of others) {
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(s))).status, 401);
      assert.equal((await sessionRow(t.db, s.sessionId))!.end_reason, 'revoked');
      assert.equal((await auditRows(t.db, { sessionId: s.sessionId, type: 'SESSION_REVOKED' })).length, 1);
    }
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(me))).status, 200);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(stranger.tokens))).status, 200);
    assert.deepEqual((await t.http.delete('/api/v1/sessions').set('Authorization', bearer(me))).body, { revoked: 0 });
  });

  it("ending all others waits for a login of the same user that holds the user's row, instead of locking sessions in another order (a deadlock)", async () => {
    const user = await registerUser(t.http);
    const others = [await login(t.http, user), await login(t.http, user)];
    const me = await login(t.http, user);
    // A login in progress: it has locked the user's row and is about to lock the sessions by last use.
    const runner = t.db.createQueryRunner();
    await runner.connect();
    let answered = false;
    try {
      await runner.startTransaction();
      await runner.query(`SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE`, [user.id]);
      const revoking = t.http
        .delete('/api/v1/sessions')
        .set('Authorization', bearer(me))
        .then((res) => {
          answered = true;
          return res;
        });
      await sleep(400);
      assert.equal(answered, false, 'it waits for the user row (until 0.22.0 it went on, locking sessions in its own order)');
      // The login locks them all now, which no longer meets the revocation's locks.
      await runner.query(`SELECT id FROM sessions WHERE user_id = $1 AND ended_at IS NULL ORDER BY last_seen_at DESC, created_at DESC FOR UPDATE`, [
        user.id,
      ]);
      await runner.commitTransaction();
      const res = await revoking;
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, { revoked: others.length });
    } finally {
      if (runner.isTransactionActive) await runner.rollbackTransaction();
      await runner.release();
    }
  });
});

describe('password change (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => {
    await t.close();
  });

  it('needs the right current password; a wrong one changes nothing', async () => {
    const user = await registerUser(t.http);
    const me = await login(t.http, user);
    const other = await login(t.http, user);
    const res = await t.http
      .put('/api/v1/users/me/password')
      .set('Authorization', bearer(me))
      .send({ currentPassword: 'not-my-password-at-all', newPassword: 'a-brand-new-password' });
    assert.equal(res.status, 401);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(other))).status, 200);
    await login(t.http, user); // the old password still works
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'PASSWORD_CHANGED' })).length, 0);
  });

  it('changes the password, ends every other session, keeps the current one, audits it', async () => {
    const user = await registerUser(t.http);
    const others = [await login(t.http, user), await login(t.http, user)];
    const me = await login(t.http, user);
    const newPassword = 'a-brand-new-password-🔑';
    const res = await t.http.put('/api/v1/users/me/password').set('Authorization', bearer(me)).send({ currentPassword: user.password, newPassword });
    assert.equal(res.status, 204);
    for (const s of others) {
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(s))).status, 401);
      assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: s.refreshToken })).status, 401);
      assert.equal((await sessionRow(t.db, s.sessionId))!.end_reason, 'password_changed');
      const events = await auditRows(t.db, { sessionId: s.sessionId, type: 'SESSION_REVOKED' });
      assert.equal(events.length, 1);
      assert.equal(events[0].metadata.reason, 'password_changed');
    }
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(me))).status, 200);
    assert.equal((await t.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password })).status, 401);
    await login(t.http, { email: user.email, password: newPassword });
    const changed = await auditRows(t.db, { userId: user.id, type: 'PASSWORD_CHANGED' });
    assert.equal(changed.length, 1);
    assert.equal(changed[0].session_id, me.sessionId);
    assert.equal(changed[0].metadata.endedSessions, 2);
  });

  it('applies the registration rules to the new password', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    for (const newPassword of ['short', 'Qwerty123456', 'x'.repeat(129), `${user.username}-again-and-again`]) {
      const res = await t.http
        .put('/api/v1/users/me/password')
        .set('Authorization', bearer(tokens))
        .send({ currentPassword: user.password, newPassword });
      assert.equal(res.status, 400, newPassword);
      // Each names the field as the request does (the username rule named `password` until 0.22.0).
      assert.match(JSON.stringify(res.body.message), /^\["newPassword /, newPassword);
    }
    // Bad input changes nothing: not the login throttle's counters or known clients either,
    // which a right current password settles (until 0.28.0 it was checked first).
    const throttleState = async () => [
      await t.db.query(`SELECT key, failures, last_failure_at, locked_until FROM login_throttle ORDER BY key`),
      await t.db.query(`SELECT key, last_success_at, account FROM login_known_clients ORDER BY key`),
    ];
    const before = await throttleState();
    const named = await t.http
      .put('/api/v1/users/me/password')
      .set('Authorization', bearer(tokens))
      .send({ currentPassword: user.password, newPassword: `${user.username}-again-and-again` });
    assert.deepEqual(named.body.message, ['newPassword must not contain the username, the email name or the service name']);
    assert.deepEqual(await throttleState(), before);
    await login(t.http, user);
  });

  /** A password change answered while a rename the database holds uncommitted commits under it. */
  const changeDuringRename = async (newPassword: (newName: string) => string) => {
    const { user, tokens } = await registerAndLogin(t.http);
    const newName = `renamed${randomUUID().slice(0, 8)}`;
    const holder = new Client({ connectionString: t.config.DATABASE_URL });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`UPDATE users SET username = $2 WHERE id = $1`, [user.id, newName]);
      const change = t.http
        .put('/api/v1/users/me/password')
        .set('Authorization', bearer(tokens))
        .send({ currentPassword: user.password, newPassword: newPassword(newName) })
        .then((res) => res);
      await untilBackend(
        t.db,
        `wait_event_type = 'Lock' AND query LIKE '%FROM users WHERE id = $1 FOR NO KEY UPDATE%'`,
        'the change waiting for the row the rename holds',
      );
      await holder.query('COMMIT');
      return { user, newName, res: await change };
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      await holder.end();
    }
  };

  it('checks the new password against the names the account has when the change commits, not those it read first', async () => {
    // Free of the old names, so it passes the check made before the current password's; it
    // holds the name the account has by the time the change takes the row.
    const { user, res } = await changeDuringRename((newName) => `${newName}-again-and-again`);
    assert.equal(res.status, 400, JSON.stringify(res.body));
    assert.deepEqual(res.body.message, ['newPassword must not contain the username, the email name or the service name']);
    // Nothing changed: the old password still logs in, and no PASSWORD_CHANGED was written.
    await login(t.http, user);
    assert.deepEqual(await auditRows(t.db, { userId: user.id, type: 'PASSWORD_CHANGED' }), []);
  });

  it('keeps this place known under the names the account has when the change commits', async () => {
    const { newName, res } = await changeDuringRename(() => 'a new password of some length');
    assert.equal(res.status, 204, JSON.stringify(res.body));
    const known = counterKeyDigest(t.config.PASSWORD_PEPPER)(`known:username:${newName}|127.0.0.1`);
    assert.deepEqual(await t.db.query(`SELECT 1 AS kept FROM login_known_clients WHERE key = $1`, [known]), [{ kept: 1 }]);
  });
});

describe('session limit (e2e)', () => {
  let t: TestApp;
  before(async () => {
    // Every login attempt is counted as a failure until it succeeds (so parallel guesses cannot
    // outrun the throttle): twenty parallel logins need room for twenty.
    t = await createTestApp({ SESSION_MAX_PER_USER: '3', LOGIN_MAX_FAILURES_PER_IDENTIFIER: '50' });
  });
  after(async () => {
    await t.close();
  });

  it('ends the least recently used session when a login goes beyond the limit', async () => {
    const user = await registerUser(t.http);
    const [a, b, c] = [await login(t.http, user), await login(t.http, user), await login(t.http, user)];
    // a was used most recently; b is the least recently used.
    await t.db.query(`UPDATE sessions SET last_seen_at = now() - interval '1 minute' WHERE id = $1`, [b.sessionId]);
    await t.db.query(`UPDATE sessions SET last_seen_at = now() + interval '1 second' WHERE id = $1`, [a.sessionId]);
    const d = await login(t.http, user);
    assert.equal((await sessionRow(t.db, b.sessionId))!.end_reason, 'session_limit');
    for (const s of [a, c, d]) assert.equal((await sessionRow(t.db, s.sessionId))!.ended_at, null);
    const events = await auditRows(t.db, { sessionId: b.sessionId, type: 'SESSION_REVOKED' });
    assert.equal(events.length, 1);
    assert.equal(events[0].metadata.reason, 'session_limit');
  });

  it('forgets the sessions a login ended once the login commits: one read before the commit and cached is not honoured after the answer', async () => {
    const user = await registerUser(t.http);
    const [a, b, c] = [await login(t.http, user), await login(t.http, user), await login(t.http, user)];
    await t.db.query(`UPDATE sessions SET last_seen_at = now() - interval '1 minute' WHERE id = $1`, [b.sessionId]);
    // The login waits a second after ending b (its INSERT of the new session sleeps), and no
    // NOTIFY comes back for b: what this instance knows of b's end is the login's own doing.
    await t.db.query(`CREATE FUNCTION slow_login_insert() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN IF NEW.user_id = '${user.id}' THEN PERFORM pg_sleep(1); END IF; RETURN NEW; END $$`);
    await t.db.query(`CREATE TRIGGER slow_login_insert BEFORE INSERT ON sessions FOR EACH ROW EXECUTE FUNCTION slow_login_insert()`);
    await t.db.query(`ALTER TABLE sessions DISABLE TRIGGER sessions_notify_update`);
    try {
      const fourth = t.http
        .post('/api/v1/auth/login')
        .send({ email: user.email, password: user.password })
        .then((res) => res);
      await untilBackend(t.db, `wait_event = 'PgSleep'`, 'the login sleeping after it ended b');
      // b's end is not committed: this read finds b active, and this instance caches it.
      assert.equal((await t.http.get('/api/v1/auth/session').set('Authorization', bearer(b))).status, 200);
      assert.equal((await fourth).status, 200);
      assert.equal((await sessionRow(t.db, b.sessionId))!.end_reason, 'session_limit');
      // After the login's answer b is refused (until 0.29.0 the cached entry answered 200 until b's NOTIFY).
      assert.equal((await t.http.get('/api/v1/auth/session').set('Authorization', bearer(b))).status, 401);
      for (const s of [a, c]) assert.equal((await t.http.get('/api/v1/auth/session').set('Authorization', bearer(s))).status, 200);
    } finally {
      await t.db.query(`ALTER TABLE sessions ENABLE TRIGGER sessions_notify_update`);
      await t.db.query(`DROP TRIGGER slow_login_insert ON sessions`);
      await t.db.query(`DROP FUNCTION slow_login_insert()`);
    }
  });

  it('holds under 20 parallel logins of one user', async () => {
    const user = await registerUser(t.http);
    const otherCounters = `SELECT COALESCE(sum(failures), 0)::int AS failures, count(locked_until)::int AS locked FROM login_throttle WHERE key <> $1`;
    const identifierKey = counterKeyDigest(t.config.PASSWORD_PEPPER)(`identifier:email:${user.email.toLowerCase()}`);
    const [before] = await t.db.query(otherCounters, [identifierKey]);
    const results = await Promise.all(
      Array.from({ length: 20 }, () => t.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password })),
    );
    assert.ok(results.every((r) => r.status === 200));
    const [{ active, limited }] = await t.db.query(
      `SELECT count(*) FILTER (WHERE ended_at IS NULL)::int AS active,
              count(*) FILTER (WHERE end_reason = 'session_limit')::int AS limited
         FROM sessions WHERE user_id = $1`,
      [user.id],
    );
    assert.equal(active, 3);
    assert.equal(limited, 17);
    const [{ events }] = await t.db.query(
      `SELECT count(*)::int AS events FROM audit_events WHERE user_id = $1 AND type = 'SESSION_REVOKED' AND metadata->>'reason' = 'session_limit'`,
      [user.id],
    );
    assert.equal(events, 17);
    // Each login settled its attempt in the transaction that opened its session: the
    // identifier's count starts again, and the IP's is back where it was.
    const [identifier] = await t.db.query(`SELECT failures, locked_until FROM login_throttle WHERE key = $1`, [identifierKey]);
    assert.deepEqual(identifier, { failures: 0, locked_until: null });
    assert.deepEqual(await t.db.query(otherCounters, [identifierKey]).then((rows) => rows[0]), before);
  });
});

describe('session activity writes (e2e)', () => {
  it('never wait for a session another transaction holds locked: the others are written at once, that one right after the lock goes', async () => {
    const t = await createTestApp();
    const dataSource = t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN);
    const holder = dataSource.createQueryRunner();
    const written: string[] = [];
    const missing: string[] = [];
    // A buffer of its own, flushed by the test (its tick a minute away); the app's has nothing pending.
    const buffer = new SessionActivityBuffer(dataSource, {
      idleTtlSeconds: 3600,
      intervalMs: 60_000,
      onWrite: () => (outcome) => {
        written.push(...(outcome?.writes.map((w) => w.sessionId) ?? []));
        missing.push(...(outcome?.missing ?? []));
      },
    });
    try {
      const user = await registerUser(t.http);
      const [free, locked] = [await login(t.http, user), await login(t.http, user)];
      buffer.start();
      // As a password change ending the user's other sessions holds them.
      await holder.startTransaction();
      await holder.query('SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE', [locked.sessionId]);
      // After the logins' own last_seen_at, before the flush's now().
      await sleep(50);
      const seen = Date.now() - 10;
      buffer.record(free.sessionId, seen, false);
      buffer.record(locked.sessionId, seen, false);
      const flushed = await Promise.race([buffer.flush().then(() => true), sleep(3_000).then(() => false)]);
      assert.ok(flushed, 'the flush did not wait for the locked session');
      assert.deepEqual(written, [free.sessionId]);
      assert.deepEqual(missing, [], 'a locked session is not taken for an ended one');
      assert.equal(buffer.pendingCount, 1);
      await holder.rollbackTransaction();
      // Written by the flush that follows shortly after, without waiting for the tick.
      for (let waited = 0; !written.includes(locked.sessionId); waited += 20) {
        assert.ok(waited < 5_000, 'the locked session was written once the lock was gone');
        await sleep(20);
      }
      assert.equal(buffer.pendingCount, 0);
      const rows = await t.db.query(`SELECT (extract(epoch FROM last_seen_at) * 1000)::float8 AS seen FROM sessions WHERE id = ANY($1::uuid[])`, [
        [free.sessionId, locked.sessionId],
      ]);
      assert.equal(rows.length, 2);
      for (const r of rows) assert.ok(Math.abs(r.seen - seen) < 1, `last_seen_at ${r.seen} is the activity's ${seen}`);
      // Activity stamped ahead of the database's clock (an instance's estimate running fast) is taken as now, no later.
      buffer.record(free.sessionId, Date.now() + 3_600_000, false);
      await buffer.flush();
      const [{ ahead }] = await t.db.query(`SELECT last_seen_at > now() AS ahead FROM sessions WHERE id = $1`, [free.sessionId]);
      assert.equal(ahead, false);
    } finally {
      if (holder.isTransactionActive) await holder.rollbackTransaction();
      await holder.release();
      await buffer.stop();
      await t.close();
    }
  });

  it('writes activity noted after it stopped at once (shutdown: requests are answered until the server closes)', async () => {
    const t = await createTestApp();
    const dataSource = t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN);
    const written: string[] = [];
    const buffer = new SessionActivityBuffer(dataSource, {
      idleTtlSeconds: 3600,
      intervalMs: 60_000,
      onWrite: () => (outcome) => void written.push(...(outcome?.writes.map((w) => w.sessionId) ?? [])),
    });
    try {
      const user = await registerUser(t.http);
      const tokens = await login(t.http, user);
      buffer.start();
      await buffer.stop();
      await sleep(50);
      buffer.record(tokens.sessionId, Date.now() - 10, false);
      for (let waited = 0; !written.includes(tokens.sessionId); waited += 20) {
        assert.ok(waited < 5_000, 'activity noted after stop() was written');
        await sleep(20);
      }
      assert.equal(buffer.pendingCount, 0);
    } finally {
      await buffer.stop();
      await t.close();
    }
  });

  /** A buffer of its own on the app's pool, its tick a minute away: the test flushes and stops it. */
  const ownBuffer = (dataSource: DataSource) => {
    const written: string[] = [];
    const chunks: string[][] = [];
    const buffer = new SessionActivityBuffer(dataSource, {
      idleTtlSeconds: 3600,
      intervalMs: 60_000,
      onWrite: (ids) => {
        chunks.push(ids);
        return (outcome) => void written.push(...(outcome?.writes.map((w) => w.sessionId) ?? []));
      },
    });
    return { buffer, written, chunks };
  };

  /** Waits (at most 5 s) until an activity write of this database waits for a lock. */
  const untilAWriteWaits = async (t: TestApp) => {
    for (let waited = 0; ; waited += 20) {
      const [{ n }] = await t.db.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FOR NO KEY UPDATE SKIP LOCKED%'`,
      );
      if (n > 0) return;
      assert.ok(waited < 5_000, 'the activity write is waiting');
      await sleep(20);
    }
  };

  /**
   * Runs `body` with a test app, a query runner to hold row locks with, and a buffer of its own
   * (ownBuffer), each given back or closed after it, whatever it left open.
   */
  const withOwnBuffer = async (
    body: (scope: { t: TestApp; dataSource: DataSource; holder: QueryRunner } & ReturnType<typeof ownBuffer>) => Promise<void>,
  ): Promise<void> => {
    const t = await createTestApp();
    const dataSource = t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN);
    const holder = dataSource.createQueryRunner();
    const own = ownBuffer(dataSource);
    try {
      await body({ t, dataSource, holder, ...own });
    } finally {
      if (holder.isTransactionActive) await holder.rollbackTransaction();
      await holder.release();
      await own.buffer.stop();
      await t.close();
    }
  };

  it('stop() resolves only once activity noted during its last write is written too', async () => {
    await withOwnBuffer(async ({ t, holder, buffer, written }) => {
      const user = await registerUser(t.http);
      const [first, second] = [await login(t.http, user), await login(t.http, user)];
      buffer.start();
      // The write stop() starts waits for the table (as one would behind a busy server), so that
      // the request answered meanwhile notes its activity while that write is in flight.
      await holder.startTransaction();
      await holder.query('LOCK TABLE sessions IN EXCLUSIVE MODE');
      buffer.record(first.sessionId, Date.now() - 10, false);
      const stopping = buffer.stop();
      await untilAWriteWaits(t);
      buffer.record(second.sessionId, Date.now() - 10, false);
      await new Promise((resolve) => setImmediate(resolve)); // its flush is asked for (and waits for the one in flight)
      await holder.rollbackTransaction();
      await stopping;
      assert.deepEqual([...written].sort(), [first.sessionId, second.sessionId].sort(), 'both written when stop() resolved');
      assert.equal(buffer.pendingCount, 0);
    });
  });

  it('stop() tries a session locked elsewhere again until the lock goes, and gives up after its deadline', async () => {
    await withOwnBuffer(async ({ t, dataSource, holder, buffer, written }) => {
      const second = ownBuffer(dataSource);
      const user = await registerUser(t.http);
      const [free, locked] = [await login(t.http, user), await login(t.http, user)];
      buffer.start();
      await holder.startTransaction();
      await holder.query('SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE', [locked.sessionId]);
      buffer.record(free.sessionId, Date.now() - 10, false);
      buffer.record(locked.sessionId, Date.now() - 10, false);
      const stopping = buffer.stop();
      for (let waited = 0; !written.includes(free.sessionId); waited += 20) {
        assert.ok(waited < 5_000, 'the free session was written');
        await sleep(20);
      }
      assert.deepEqual(written, [free.sessionId], 'the locked one is not written while locked');
      await holder.rollbackTransaction();
      await stopping;
      assert.deepEqual(written, [free.sessionId, locked.sessionId], 'written once the lock went, before stop() resolved');
      assert.equal(buffer.pendingCount, 0);

      // A lock that outlasts the deadline: stop() resolves all the same, the activity left pending.
      second.buffer.stopDeadlineMs = 300;
      second.buffer.start();
      await holder.startTransaction();
      await holder.query('SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE', [locked.sessionId]);
      second.buffer.record(locked.sessionId, Date.now() - 10, false);
      await second.buffer.stop();
      assert.deepEqual(second.written, []);
      assert.equal(second.buffer.pendingCount, 1);
      assert.ok(second.chunks.length >= 2, `tried again before giving up (${second.chunks.length})`);
    });
  });

  it('writes a batch larger than a chunk in statements of at most a chunk each, a locked session kept for the next flush', async () => {
    await withOwnBuffer(async ({ t, holder, buffer, written, chunks }) => {
      buffer.chunkSize = 2;
      const user = await registerUser(t.http);
      const sessions: string[] = [];
      for (let i = 0; i < 5; i++) sessions.push((await login(t.http, user)).sessionId);
      await sleep(50);
      const seen = Date.now() - 10;
      await holder.startTransaction();
      await holder.query('SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE', [sessions[2]]);
      for (const id of sessions) buffer.record(id, seen, false);
      await buffer.flush();
      assert.deepEqual(
        chunks.map((c) => c.length),
        [2, 2, 1],
      );
      assert.deepEqual(chunks.flat().sort(), [...sessions].sort());
      assert.deepEqual([...written].sort(), sessions.filter((id) => id !== sessions[2]).sort());
      assert.equal(buffer.pendingCount, 1, 'the locked one waits for the next flush');
      await holder.rollbackTransaction();
      await buffer.flush();
      assert.deepEqual([...written].sort(), [...sessions].sort());
      const rows = await t.db.query(`SELECT (extract(epoch FROM last_seen_at) * 1000)::float8 AS seen FROM sessions WHERE id = ANY($1::uuid[])`, [
        sessions,
      ]);
      assert.equal(rows.length, 5);
      for (const r of rows) assert.ok(Math.abs(r.seen - seen) < 1, `last_seen_at ${r.seen} is the activity's ${seen}`);
    });
  });
});

describe('token rotation (e2e)', () => {
  it('never moves last_seen_at or the idle deadline back, and so notifies nobody (refresh and reauthentication)', async () => {
    const t = await createTestApp();
    const listener = new Client({ connectionString: t.config.DATABASE_URL });
    await listener.connect();
    try {
      const user = await registerUser(t.http);
      const tokens = await login(t.http, user);
      // As a later write (another instance's activity, on its later clock) leaves the row before
      // a rotation that waited for its lock: later than the rotation's own time.
      await t.db.query(`UPDATE sessions SET last_seen_at = now() + interval '1 hour', idle_expires_at = now() + interval '2 hours' WHERE id = $1`, [
        tokens.sessionId,
      ]);
      const ahead = (await sessionRow(t.db, tokens.sessionId))!;
      const notified: string[] = [];
      listener.on('notification', (m) => void notified.push(m.payload ?? ''));
      await listener.query('LISTEN sessionary_sessions');
      const expectUnmoved = async (what: string) => {
        const row = (await sessionRow(t.db, tokens.sessionId))!;
        assert.equal(row.last_seen_at.getTime(), ahead.last_seen_at.getTime(), `${what}: last_seen_at not moved back`);
        assert.equal(row.idle_expires_at.getTime(), ahead.idle_expires_at.getTime(), `${what}: idle deadline not moved back`);
      };

      const refreshed = (await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken }).expect(200)).body as Tokens;
      await expectUnmoved('refresh');
      const res = await t.http.post('/api/v1/auth/reauthenticate').set('Authorization', bearer(refreshed)).send({ password: user.password });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      await expectUnmoved('reauthentication');

      // Notifications arrive in commit order: once this one is heard, a rotation's would have been.
      await t.db.query(`SELECT pg_notify('sessionary_sessions', 'marker')`);
      for (let waited = 0; !notified.includes('marker'); waited += 20) {
        assert.ok(waited < 5_000, 'the marker arrived');
        await sleep(20);
      }
      assert.deepEqual(
        notified.filter((p) => p.includes(tokens.sessionId)),
        [],
      );
    } finally {
      await listener.end();
      await t.close();
    }
  });
});
