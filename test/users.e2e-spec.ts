import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { auditRows, recordFailedStatements } from './helpers/db';
import { bearer, login, registerAndLogin, registerUser, uniqueName } from './helpers/factories';
import { STEP_UP_CHALLENGE, staleTokens } from './helpers/step-up';
import { createTestApp, TestApp } from './helpers/test-app';
import { UsersService } from '../src/users/users.service';

describe('users (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => {
    await t.close();
  });

  it('GET /users/me answers the profile and nothing secret', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    const res = await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens));
    assert.equal(res.status, 200);
    assert.deepEqual(Object.keys(res.body).sort(), ['createdAt', 'email', 'id', 'role', 'updatedAt', 'username']);
    const [row] = await t.db.query(`SELECT username, email, role, created_at, updated_at FROM users WHERE id = $1`, [user.id]);
    assert.deepEqual(res.body, {
      id: user.id,
      username: row.username,
      email: user.email,
      role: 'user',
      createdAt: row.created_at.toISOString(),
      updatedAt: row.updated_at.toISOString(),
    });
    assert.ok(!JSON.stringify(res.body).includes('$2b$'));
    // Later calls (a prepared statement, planned once per connection) answer the same.
    for (let i = 0; i < 3; i++) assert.deepEqual((await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).body, res.body);
  });

  it('PATCH /users/me changes the username, audits PROFILE_UPDATED in the same transaction', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    const newName = `${user.username}_x`;
    const res = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send({ username: newName });
    assert.equal(res.status, 200);
    assert.equal(res.body.username, newName);
    const [row] = await t.db.query('SELECT username FROM users WHERE id = $1', [user.id]);
    assert.equal(row.username, newName);
    const events = await auditRows(t.db, { userId: user.id, type: 'PROFILE_UPDATED' });
    assert.equal(events.length, 1);
    assert.equal(events[0].metadata.fields, 'username');
    assert.equal(events[0].session_id, tokens.sessionId);
  });

  it('PATCH /users/me needs the right current password to change the email, once the login is no longer recent', async () => {
    const user = await registerUser(t.http);
    // Older than REAUTH_MAX_AGE: a recent authentication alone would do (test/step-up.e2e-spec.ts).
    const tokens = await staleTokens(t, await login(t.http, user));
    const email = `new_${user.email}`;
    const missing = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send({ email });
    const wrong = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send({ email, currentPassword: 'definitely-not-it' });
    assert.equal(missing.status, 401);
    assert.equal(missing.headers['www-authenticate'], STEP_UP_CHALLENGE);
    assert.equal(wrong.status, 401);
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'LOGIN_FAILED' })).length, 1, 'only the wrong password is a failed login');
    let [row] = await t.db.query('SELECT email FROM users WHERE id = $1', [user.id]);
    assert.equal(row.email, user.email);
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'PROFILE_UPDATED' })).length, 0);

    const ok = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send({ email, currentPassword: user.password });
    assert.equal(ok.status, 200);
    assert.equal(ok.body.email, email);
    [row] = await t.db.query('SELECT email FROM users WHERE id = $1', [user.id]);
    assert.equal(row.email, email);
    // The session survives its own 401s for a wrong current password.
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).status, 200);
  });

  it('PATCH /users/me asks for the step-up for an email the database tells apart, though JavaScript lower-cases both alike (final sigma)', async () => {
    const tag = uniqueName().slice(2);
    const user = await registerUser(t.http, { email: `νίκος_${tag}@example.test` });
    const tokens = await staleTokens(t, await login(t.http, user));
    // 'ΝΊΚΟΣ'.toLowerCase() is 'νίκος' (final sigma); PostgreSQL's lower() gives 'νίκοσ': another address to the index and the login.
    const upper = `ΝΊΚΟΣ_${tag}@example.test`;
    assert.equal(upper.toLowerCase(), user.email);
    const res = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send({ email: upper });
    assert.equal(res.status, 401, JSON.stringify(res.body));
    assert.equal(res.headers['www-authenticate'], STEP_UP_CHALLENGE);
    const [row] = await t.db.query('SELECT email FROM users WHERE id = $1', [user.id]);
    assert.equal(row.email, user.email);
  });

  it("PATCH /users/me needs no step-up for a change of ASCII letters' case alone, and asks it for any other spelling lower() takes for the same (Ü); refuses İ", async () => {
    const tag = uniqueName().slice(2);
    const user = await registerUser(t.http, { email: `alice_${tag}@bücher.test` });
    const tokens = await staleTokens(t, await login(t.http, user));
    // The same address to lower() (a UTF-8 database's), but a change of more than ASCII letters' case: the step-up is asked.
    const recased = `alice_${tag}@BÜCHER.test`;
    const refused = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send({ email: recased });
    assert.equal(refused.status, 401, JSON.stringify(refused.body));
    assert.equal(refused.headers['www-authenticate'], STEP_UP_CHALLENGE);
    let [row] = await t.db.query('SELECT email FROM users WHERE id = $1', [user.id]);
    assert.equal(row.email, user.email);
    // 'İ' (U+0130): PostgreSQL's lower() gives 'i', IDNA 'i̇'; no new address may hold it (0.25.0), with or without the step-up.
    const lookalike = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', bearer(tokens))
      .send({ email: `alice_${tag}@bücher.test`.replace('alice', 'alİce'), currentPassword: user.password });
    assert.equal(lookalike.status, 400, JSON.stringify(lookalike.body));
    const cased = `Alice_${tag}@bücher.TEST`;
    const ok = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send({ email: cased });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    [row] = await t.db.query('SELECT email FROM users WHERE id = $1', [user.id]);
    assert.equal(row.email, cased);
  });

  it('PATCH /users/me answers 409 and changes nothing when the profile changed while it waited (its step-up was decided on the old one)', async () => {
    const user = await registerUser(t.http);
    const tokens = await staleTokens(t, await login(t.http, user));
    const locker = t.db.createQueryRunner();
    await locker.connect();
    let res;
    try {
      // The owner's change of address holds the row; a stale token's change back to the old address in another case, which needs no step-up against it, waits.
      await locker.startTransaction();
      await locker.query(`UPDATE users SET email = $2 WHERE id = $1`, [user.id, `moved_${user.email}`]);
      const back = t.http
        .patch('/api/v1/users/me')
        .set('Authorization', bearer(tokens))
        .send({ email: user.email.toUpperCase() })
        .then((r) => r);
      for (let waited = 0; ; waited += 20) {
        const [{ n }] = await t.db.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
        );
        if (n >= 1) break;
        assert.ok(waited < 10_000, 'the change waits for the row');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await locker.commitTransaction();
      res = await back;
    } finally {
      await locker.release();
    }
    assert.equal(res.status, 409, JSON.stringify(res.body));
    assert.match(res.body.message, /changed by another request meanwhile/);
    const [row] = await t.db.query('SELECT email FROM users WHERE id = $1', [user.id]);
    assert.equal(row.email, `moved_${user.email}`, "the owner's change stands");
  });

  it("UsersService.updateProfile holds a host's call to the username rule: a 400, not a database error", async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    const users = t.app.get(UsersService);
    const auth = { userId: user.id, sessionId: tokens.sessionId, authTime: Math.floor(Date.now() / 1000) };
    for (const username of ['x'.repeat(40), null, 'a b', 7]) {
      await assert.rejects(
        users.updateProfile(auth, { username } as never, { ipAddress: '127.0.0.1', userAgent: null }),
        (error: { status?: number; response?: { message?: string[] } }) =>
          error.status === 400 && /username must be 3 to 32/.test(String(error.response?.message)),
        JSON.stringify(username),
      );
    }
    const [row] = await t.db.query('SELECT username FROM users WHERE id = $1', [user.id]);
    assert.equal(row.username, user.username);
  });

  it('PATCH /users/me checks a currentPassword whenever it is sent: a wrong one with a username change is a 401 that changes nothing', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    const newName = uniqueName();
    const wrong = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', bearer(tokens))
      .send({ username: newName, currentPassword: 'definitely-not-it' });
    assert.equal(wrong.status, 401);
    const [row] = await t.db.query('SELECT username FROM users WHERE id = $1', [user.id]);
    assert.equal(row.username, user.username);
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'PROFILE_UPDATED' })).length, 0);
    const failed = await auditRows(t.db, { userId: user.id, type: 'LOGIN_FAILED' });
    assert.deepEqual(
      failed.map((e) => e.metadata),
      [{ method: 'current_password', action: 'profile_update' }],
    );
    const ok = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', bearer(tokens))
      .send({ username: newName, currentPassword: user.password });
    assert.equal(ok.status, 200);
    assert.equal(ok.body.username, newName);
  });

  it('PATCH /users/me answers 409 for a name or email someone else has, changing nothing', async () => {
    const other = await registerUser(t.http);
    const { user, tokens } = await registerAndLogin(t.http);
    const statements = recordFailedStatements(t.db);
    const byName = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send({ username: other.username.toUpperCase() });
    const byEmail = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', bearer(tokens))
      .send({ email: other.email, currentPassword: user.password });
    statements.stop();
    assert.equal(byName.status, 409);
    assert.equal(byEmail.status, 409);
    // Found taken without a unique violation, which PostgreSQL logs with the taken name or address.
    assert.deepEqual(statements.failed, []);
    assert.deepEqual(byName.body, byEmail.body);
    const [row] = await t.db.query('SELECT username, email FROM users WHERE id = $1', [user.id]);
    assert.deepEqual(row, { username: user.username, email: user.email });
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'PROFILE_UPDATED' })).length, 0);
  });

  it("PATCH /users/me changes nothing for a session ended during its password check (a thief's, ended by the owner's password change)", async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    const users = t.app.get(UsersService);
    const verify = users.verifyCurrentPassword.bind(users);
    users.verifyCurrentPassword = async (...args: Parameters<UsersService['verifyCurrentPassword']>) => {
      await verify(...args);
      await t.db.query(`UPDATE sessions SET ended_at = now(), end_reason = 'password_changed' WHERE id = $1`, [tokens.sessionId]);
    };
    try {
      const res = await t.http
        .patch('/api/v1/users/me')
        .set('Authorization', bearer(tokens))
        .send({ email: `taken_over_${user.email}`, currentPassword: user.password });
      assert.deepEqual({ status: res.status, message: res.body.message }, { status: 401, message: 'Session is not active' });
    } finally {
      users.verifyCurrentPassword = verify;
    }
    const [row] = await t.db.query('SELECT email FROM users WHERE id = $1', [user.id]);
    assert.equal(row.email, user.email);
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'PROFILE_UPDATED' })).length, 0);
  });

  it('PATCH /users/me answers 400 for bad fields and unknown properties', async () => {
    const { tokens } = await registerAndLogin(t.http);
    for (const body of [{ username: 'x' }, { email: 'nope' }, { role: 'admin' }, { passwordHash: 'x' }, { username: 42 }]) {
      const res = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send(body);
      assert.equal(res.status, 400, JSON.stringify(body));
    }
  });

  it('PATCH /users/me refuses a new email with invisible or control characters; an address stored before these rules still signs in', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    for (const email of [
      `a\u200b${user.email}`,
      `"x\r\ny"@example.test`,
      `jose\u0301.${user.email}`,
      `\uff41${user.email}`,
      `a.${user.username}@mail.example\u3002test`,
    ]) {
      const res = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(tokens)).send({ email, currentPassword: user.password });
      assert.equal(res.status, 400, JSON.stringify(email));
      assert.match(JSON.stringify(res.body.message), /email must be an email address without spaces, quotes, control or invisible characters/);
    }
    const [row] = await t.db.query('SELECT email FROM users WHERE id = $1', [user.id]);
    assert.equal(row.email, user.email);
    // An address a registration took before (a quoted local part with a space): login looks it up as it is.
    const legacy = `"${user.username} old"@example.test`;
    await t.db.query('UPDATE users SET email = $2 WHERE id = $1', [user.id, legacy]);
    const res = await t.http.post('/api/v1/auth/login').send({ email: legacy, password: user.password });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    // And a client that sends the whole profile back with it unchanged can still change the rest.
    const renamed = `${user.username}_2`.slice(0, 32);
    const profile = await t.http.patch('/api/v1/users/me').set('Authorization', bearer(res.body)).send({ username: renamed, email: legacy });
    assert.equal(profile.status, 200, JSON.stringify(profile.body));
    assert.deepEqual([profile.body.username, profile.body.email], [renamed, legacy]);
  });
});

describe('current-password checks are throttled like logins (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ LOGIN_MAX_FAILURES_PER_IDENTIFIER: '3', LOGIN_BACKOFF_BASE: '60', TRUST_PROXY: 'true' });
  });
  after(async () => {
    await t.close();
  });

  it('a stolen access token cannot guess the password faster than a login could', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    // From elsewhere than the login (where the owner is a known client: see throttling.e2e-spec.ts).
    const thief = '203.0.113.77';
    const guess = (currentPassword: string) =>
      t.http
        .put('/api/v1/users/me/password')
        .set('Authorization', bearer(tokens))
        .set('X-Forwarded-For', thief)
        .send({ currentPassword, newPassword: 'a-fresh-long-password' });
    for (let i = 0; i < 3; i++) assert.equal((await guess(`guess-number-${i}`)).status, 401);
    const blocked = await guess(user.password);
    assert.equal(blocked.status, 429);
    assert.ok(Number(blocked.headers['retry-after']) > 0);
    const email = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', bearer(tokens))
      .set('X-Forwarded-For', thief)
      .send({ email: `x_${user.email}`, currentPassword: user.password });
    assert.equal(email.status, 429);
    const failures = await auditRows(t.db, { userId: user.id, type: 'LOGIN_FAILED' });
    assert.equal(failures.length, 3);
    assert.deepEqual(failures[0].metadata, { method: 'current_password', action: 'password_change' });
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'ACCOUNT_LOCKED' })).length, 1);
    // Nothing changed: the old password still logs in.
    assert.equal((await t.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password })).status, 200);
  });
});
