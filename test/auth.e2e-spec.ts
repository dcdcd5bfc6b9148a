import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { DataSource } from 'typeorm';
import { dataSourceOptions } from '../src/database/data-source.options';
import { runMigrationsLocked } from '../src/database/migrate';
import { auditRows, recordFailedStatements, sessionRow } from './helpers/db';
import { bearer, login, newUserInput, registerAndLogin, registerUser, sleep, uniqueName } from './helpers/factories';
import { recordQueryRunners, textOf } from './helpers/query-runners';
import { createTestApp, emptyDatabase, TestApp } from './helpers/test-app';
import { SESSIONARY_DATA_SOURCE_TOKEN } from '../src/database/data-source-name';

function decodeJwt(token: string): { header: Record<string, unknown>; payload: Record<string, unknown> } {
  const [h, p] = token.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
  };
}

describe('auth (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => {
    await t.close();
  });

  describe('register', () => {
    it('has no default accounts: the migrations create no users', async () => {
      // Applied here from nothing (the run drops the database: DROP DATABASE waits for a checkpoint).
      const fresh = await new DataSource(dataSourceOptions(await emptyDatabase())).initialize();
      try {
        await runMigrationsLocked(fresh);
        const [{ count }] = await fresh.query('SELECT count(*)::int AS count FROM users');
        assert.equal(count, 0);
      } finally {
        await fresh.destroy();
      }
    });

    it('creates the user, stores only a bcrypt hash of the peppered password, and audits REGISTER', async () => {
      const input = newUserInput();
      const res = await t.http.post('/api/v1/auth/register').set('User-Agent', 'reg-agent').send(input);
      assert.equal(res.status, 201);
      assert.deepEqual(Object.keys(res.body).sort(), ['createdAt', 'email', 'id', 'role', 'username']);
      assert.equal(res.body.username, input.username);
      assert.equal(res.body.role, 'user');
      const [row] = await t.db.query('SELECT * FROM users WHERE id = $1', [res.body.id]);
      assert.match(row.password_hash, /^\$2b\$04\$/);
      assert.ok(!row.password_hash.includes(input.password));
      const events = await auditRows(t.db, { userId: res.body.id });
      assert.deepEqual(
        events.map((e) => e.type),
        ['REGISTER'],
      );
      assert.equal(events[0].user_agent, 'reg-agent');
    });

    it('answers 409 with one message for a taken username or email, compared case-insensitively', async () => {
      const user = await registerUser(t.http);
      const statements = recordFailedStatements(t.db);
      const sameName = await t.http.post('/api/v1/auth/register').send(newUserInput({ username: user.username.toUpperCase() }));
      const sameEmail = await t.http.post('/api/v1/auth/register').send(newUserInput({ email: user.email.toUpperCase() }));
      statements.stop();
      assert.equal(sameName.status, 409);
      assert.equal(sameEmail.status, 409);
      // Found taken without a unique violation, which PostgreSQL logs with the taken name or address.
      assert.deepEqual(statements.failed, []);
      assert.deepEqual(sameName.body, sameEmail.body);
      const [{ count }] = await t.db.query('SELECT count(*)::int AS count FROM users WHERE lower(email) = lower($1)', [user.email]);
      assert.equal(count, 1);
    });

    it('lets exactly one of two concurrent registrations of one username win', async () => {
      const username = uniqueName();
      const results = await Promise.all(
        [1, 2, 3].map(() => t.http.post('/api/v1/auth/register').send(newUserInput({ username, email: `${uniqueName()}@example.test` }))),
      );
      assert.deepEqual(results.map((r) => r.status).sort(), [201, 409, 409]);
    });

    it('answers 400 naming the field for bad input, and creates nothing', async () => {
      const username = uniqueName();
      const cases: Array<[Record<string, unknown>, RegExp]> = [
        [{ username, email: `${username}@x.test` }, /password/],
        [{ username: 'ab', email: `${username}@x.test`, password: 'a-long-enough-password' }, /username/],
        [{ username: 'bad name!', email: `${username}@x.test`, password: 'a-long-enough-password' }, /username/],
        [{ username, email: 'not-an-email', password: 'a-long-enough-password' }, /email/],
        [{ username, email: `${username}@x.test`, password: 'short' }, /password/],
        [{ username, email: `${username}@x.test`, password: 'a'.repeat(129) }, /password/],
        [{ username, email: `${username}@x.test`, password: 'Qwerty123456' }, /password is too common/],
        [{ username, email: `${username}@x.test`, password: 12345678901234 }, /password/],
        [{ username, email: `${username}@x.test`, password: 'a-long-enough-password', role: 'admin' }, /role should not exist/],
        [{ username, email: `${username}@x.test`, password: `${username.toUpperCase()}-secret` }, /must not contain the username/],
        [{ username, email: `${username}@x.test`, password: 'my sessionary password' }, /must not contain/],
        // Addresses isEmail accepts that a new account may not have: a quoted local part with a
        // line break (a mail header injected), a terminal escape, invisible and bidirectional
        // marks, and a combining accent (NFD) that looks like the accented letter.
        ...[
          `"a\r\nBcc: x@evil.test"@x.test`,
          `"${username}\u001b[2J"@x.test`,
          `"${username} b"@x.test`,
          `${username}\u200b@x.test`,
          `${username}\u202e@x.test`,
          `jose\u0301_${username}@x.test`,
          // Default-ignorable characters of other categories (until 0.24.2 accepted): a combining
          // grapheme joiner, a variation selector, a Hangul filler, in the local part and the domain.
          `${username.slice(0, 2)}\u034f${username.slice(2)}@x.test`,
          `${username}@x\ufe0f.test`,
          `${username}\u3164@x.test`,
        ].map((email): [Record<string, unknown>, RegExp] => [
          { username, email, password: 'a-long-enough-password' },
          /email must be an email address without spaces, quotes, control or invisible characters/,
        ]),
        // Other spellings of an address (until 0.25.0 accepted): compatibility forms NFKC maps
        // onto plain letters (full-width, a script e, a ligature), an ideographic full stop and
        // a Punycode A-label, which IDNA maps onto the plain domain.
        ...[
          `\uff41${username}@x.test`,
          `${username}@\u212fxample.test`,
          `${username}\ufb01@x.test`,
          `${username}@mail.example\u3002test`,
          `${username}@xn--bcher-kva.test`,
        ].map((email): [Record<string, unknown>, RegExp] => [
          { username, email, password: 'a-long-enough-password' },
          /email must be an email address .*in Unicode normalization form KC, its domain as it is shown \(no Punycode\)/,
        ]),
      ];
      for (const [body, message] of cases) {
        const res = await t.http.post('/api/v1/auth/register').send(body);
        assert.equal(res.status, 400, JSON.stringify(body));
        assert.equal(res.body.error, 'Bad Request');
        assert.match(JSON.stringify(res.body.message), message);
      }
      const [{ count }] = await t.db.query('SELECT count(*)::int AS count FROM users WHERE username = $1', [username]);
      assert.equal(count, 0);
    });

    it('registers an internationalised address written as it is shown, in any letter case', async () => {
      for (const domain of ['bücher.test', 'BÜCHER.Test', 'münchen.test']) {
        const input = newUserInput();
        const email = `${input.username}@${domain}`;
        const res = await t.http.post('/api/v1/auth/register').send({ ...input, email });
        assert.equal(res.status, 201, JSON.stringify(res.body));
        assert.equal(res.body.email, email);
      }
    });

    it('counts password length in code points and accepts any characters', async () => {
      // 12 emoji are 24 UTF-16 units but 12 characters: long enough.
      const emoji = '🔑'.repeat(12);
      const user = await registerUser(t.http, { password: emoji });
      await login(t.http, user);
      // 11 emoji: too short, even though it is 22 UTF-16 units.
      const res = await t.http.post('/api/v1/auth/register').send(newUserInput({ password: '🔑'.repeat(11) }));
      assert.equal(res.status, 400);
    });

    it('uses every character of a long password (no 72-byte bcrypt truncation)', async () => {
      const base = 'x'.repeat(100);
      const user = await registerUser(t.http, { password: `${base}A` });
      const res = await t.http.post('/api/v1/auth/login').send({ email: user.email, password: `${base}B` });
      assert.equal(res.status, 401);
      await login(t.http, user); // and the long password itself logs in
    });

    it('answers 400 for malformed JSON', async () => {
      const res = await t.http.post('/api/v1/auth/register').set('Content-Type', 'application/json').send('{"username": ');
      assert.equal(res.status, 400);
      assert.equal(res.body.statusCode, 400);
    });
  });

  describe('login', () => {
    it('logs in by email and by username, case-insensitively, opening a session and auditing LOGIN', async () => {
      const user = await registerUser(t.http);
      const byEmail = await t.http.post('/api/v1/auth/login').send({ email: user.email.toUpperCase(), password: user.password });
      const byName = await t.http
        .post('/api/v1/auth/login')
        .set('User-Agent', 'ua-by-name')
        .send({ username: user.username.toUpperCase(), password: user.password });
      for (const res of [byEmail, byName]) {
        assert.equal(res.status, 200);
        assert.equal(res.headers['cache-control'], 'no-store');
        assert.equal(res.body.tokenType, 'Bearer');
        assert.equal(res.body.expiresIn, 900);
        assert.match(res.body.refreshToken, /^[A-Za-z0-9_-]{43}$/);
        const session = await sessionRow(t.db, res.body.sessionId);
        assert.ok(session);
        assert.equal(session.user_id, user.id);
        assert.equal(session.ended_at, null);
        assert.equal(session.absolute_expires_at.toISOString(), res.body.sessionExpiresAt);
      }
      const session = await sessionRow(t.db, byName.body.sessionId);
      assert.equal(session!.user_agent, 'ua-by-name');
      assert.ok(session!.ip_address);
      const logins = await auditRows(t.db, { userId: user.id, type: 'LOGIN' });
      assert.deepEqual(
        logins.map((e) => e.metadata.method),
        ['email', 'username'],
      );
      assert.equal(logins[1].session_id, byName.body.sessionId);
    });

    it('issues an at+jwt access token with the claims of API.md', async () => {
      const { user, tokens } = await registerAndLogin(t.http);
      const { header, payload } = decodeJwt(tokens.accessToken);
      assert.equal(header.alg, 'ES256'); // SIGNING_ALGORITHM's default
      assert.equal(header.typ, 'at+jwt');
      const [current] = await t.db.query(`SELECT kid FROM signing_keys WHERE state = 'current'`);
      assert.equal(header.kid, current.kid);
      assert.equal(payload.sub, user.id);
      assert.equal(payload.sid, tokens.sessionId);
      assert.equal(payload.iss, 'sessionary');
      assert.equal(payload.aud, 'sessionary-api');
      assert.equal(typeof payload.jti, 'string');
      assert.equal((payload.exp as number) - (payload.iat as number), 900);
    });

    it('never stores the refresh token, only its hash', async () => {
      const { tokens } = await registerAndLogin(t.http);
      const session = await sessionRow(t.db, tokens.sessionId);
      assert.notEqual(session!.refresh_token_hash, tokens.refreshToken);
      assert.match(session!.refresh_token_hash, /^[0-9a-f]{64}$/);
      const dump = JSON.stringify(await t.db.query('SELECT * FROM sessions WHERE id = $1', [tokens.sessionId]));
      assert.ok(!dump.includes(tokens.refreshToken));
    });

    it('answers the same 401 for an unknown account and a wrong password, and audits LOGIN_FAILED', async () => {
      const user = await registerUser(t.http);
      const wrong = await t.http.post('/api/v1/auth/login').send({ email: user.email, password: 'not-the-password-at-all' });
      const unknown = await t.http.post('/api/v1/auth/login').send({ email: `${uniqueName()}@example.test`, password: 'not-the-password-at-all' });
      assert.equal(wrong.status, 401);
      assert.equal(unknown.status, 401);
      assert.deepEqual(wrong.body, unknown.body);
      assert.deepEqual(wrong.body, { statusCode: 401, error: 'Unauthorized', message: 'Invalid credentials' });
      const strip = (h: Record<string, string>) => {
        const { date: _d, 'content-length': _l, 'x-ratelimit-remaining': _r, ...rest } = h;
        return rest;
      };
      assert.deepEqual(strip(wrong.headers), strip(unknown.headers));
      const failed = await auditRows(t.db, { userId: user.id, type: 'LOGIN_FAILED' });
      assert.equal(failed.length, 1);
      assert.equal(failed[0].metadata.reason, 'wrong_password');
      const [{ count }] = await t.db.query(`SELECT count(*)::int AS count FROM sessions WHERE user_id = $1`, [user.id]);
      assert.equal(count, 0);
    });

    it('re-hashes a password stored at another BCRYPT_COST at its next login, says so in the LOGIN event, and leaves the profile as it was', async () => {
      const user = await registerUser(t.http);
      const stored = async () =>
        (await t.db.query(`SELECT password_hash, updated_at FROM users WHERE id = $1`, [user.id]))[0] as { password_hash: string; updated_at: Date };
      const before = await stored();
      assert.match(before.password_hash, /^\$2b\$04\$/);
      // The setting raised: another instance (same database and pepper) at cost 5.
      const raised = await createTestApp({ BCRYPT_COST: '5', PASSWORD_PEPPER: t.config.PASSWORD_PEPPER, JWT_SECRET: t.config.JWT_SECRET });
      try {
        const { sessionId } = await login(raised.http, user);
        const after = await stored();
        assert.match(after.password_hash, /^\$2b\$05\$/);
        assert.deepEqual(after.updated_at, before.updated_at);
        const [event] = await auditRows(t.db, { sessionId, type: 'LOGIN' });
        assert.deepEqual(event.metadata, { method: 'email', bcryptCostFrom: 4, bcryptCostTo: 5 });
        // The new hash verifies, and is not made again.
        const again = await login(raised.http, user);
        assert.equal((await stored()).password_hash, after.password_hash);
        assert.deepEqual((await auditRows(t.db, { sessionId: again.sessionId, type: 'LOGIN' }))[0].metadata, { method: 'email' });
      } finally {
        await raised.close();
      }
    });

    it("lets two logins that re-hash at once both in: the second finds the first's new hash of the same password", async () => {
      const user = await registerUser(t.http);
      const raised = await createTestApp({ BCRYPT_COST: '5', PASSWORD_PEPPER: t.config.PASSWORD_PEPPER, JWT_SECRET: t.config.JWT_SECRET });
      const holder = t.db.createQueryRunner();
      await holder.connect();
      try {
        // The user's row held, so that both logins verify against the old hash and then meet at its lock.
        await holder.startTransaction();
        await holder.query(`SELECT 1 FROM users WHERE id = $1 FOR UPDATE`, [user.id]);
        const logins = [1, 2].map(() =>
          raised.http
            .post('/api/v1/auth/login')
            .send({ email: user.email, password: user.password })
            .then((res) => res),
        );
        const deadline = Date.now() + 10_000;
        const waiting = async () =>
          Number(
            (
              await t.db.query(
                `SELECT count(*) AS n FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FROM users WHERE id = $1 FOR NO KEY UPDATE%'`,
              )
            )[0].n,
          );
        while ((await waiting()) < 2) {
          assert.ok(Date.now() < deadline, 'both logins waiting for the row');
          await sleep(20);
        }
        await holder.commitTransaction();
        const answers = await Promise.all(logins);
        assert.deepEqual(
          answers.map((res) => res.status),
          [200, 200],
          JSON.stringify(answers.map((res) => res.body)),
        );
        const [{ password_hash: hash }] = await t.db.query(`SELECT password_hash FROM users WHERE id = $1`, [user.id]);
        assert.match(hash, /^\$2b\$05\$/);
        // One of them stored its new hash; the other found it and stored nothing.
        const events = await auditRows(t.db, { userId: user.id, type: 'LOGIN' });
        assert.deepEqual(events.map((e) => 'bcryptCostFrom' in e.metadata).sort(), [false, true]);
        assert.deepEqual(await auditRows(t.db, { userId: user.id, type: 'LOGIN_FAILED' }), []);
      } finally {
        if (holder.isTransactionActive) await holder.rollbackTransaction();
        await holder.release();
        await raised.close();
      }
    });

    it('opens no session with a password changed while its bcrypt check ran: the login waits for the change, then answers 401', async () => {
      const { user, tokens } = await registerAndLogin(t.http);
      const waiting = async () =>
        (await t.db.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`))[0]
          .n as number;
      const waitFor = async (n: number) => {
        const deadline = Date.now() + 10_000;
        while ((await waiting()) < n) {
          assert.ok(Date.now() < deadline, `${n} statement(s) waiting for the user's row`);
          await sleep(20);
        }
      };
      // The user's row held here: the change waits for it first, then the login (its password
      // already checked against the old hash) waits behind the change.
      const locker = t.db.createQueryRunner();
      await locker.connect();
      try {
        await locker.startTransaction();
        await locker.query('SELECT 1 FROM users WHERE id = $1 FOR UPDATE', [user.id]);
        const change = t.http
          .put('/api/v1/users/me/password')
          .set('Authorization', bearer(tokens))
          .send({ currentPassword: user.password, newPassword: 'a-fresh-long-password' })
          .then((r) => r);
        await waitFor(1);
        const loginWithOld = t.http
          .post('/api/v1/auth/login')
          .send({ email: user.email, password: user.password })
          .then((r) => r);
        await waitFor(2);
        await locker.rollbackTransaction();
        assert.equal((await change).status, 204);
        const res = await loginWithOld;
        assert.equal(res.status, 401, JSON.stringify(res.body));
        assert.deepEqual(res.body, { statusCode: 401, error: 'Unauthorized', message: 'Invalid credentials' });
      } finally {
        await locker.release();
      }
      // Only the session that changed the password is left; the login was audited as failed.
      const active = await t.db.query(`SELECT id FROM sessions WHERE user_id = $1 AND ended_at IS NULL`, [user.id]);
      assert.deepEqual(active, [{ id: tokens.sessionId }]);
      const failed = await auditRows(t.db, { userId: user.id, type: 'LOGIN_FAILED' });
      assert.deepEqual(
        failed.map((e) => e.metadata),
        [{ method: 'email', reason: 'password_changed' }],
      );
      assert.equal((await t.http.post('/api/v1/auth/login').send({ email: user.email, password: 'a-fresh-long-password' })).status, 200);
    });

    it('of two password changes with the same current password at once, one wins; the other is a 401 like a wrong password, audited, and changes nothing', async () => {
      const { user, tokens } = await registerAndLogin(t.http);
      const waiting = async () =>
        (
          await t.db.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FROM users WHERE id = $1 FOR NO KEY UPDATE%'`,
          )
        )[0].n as number;
      const locker = t.db.createQueryRunner();
      await locker.connect();
      let answers;
      try {
        // Both verify the current password against the hash as it is, then meet at the user's row.
        await locker.startTransaction();
        await locker.query('SELECT 1 FROM users WHERE id = $1 FOR UPDATE', [user.id]);
        const changes = ['first-new-long-password', 'second-new-long-password'].map((newPassword) =>
          t.http
            .put('/api/v1/users/me/password')
            .set('Authorization', bearer(tokens))
            .send({ currentPassword: user.password, newPassword })
            .then((r) => r),
        );
        for (let waited = 0; (await waiting()) < 2; waited += 20) {
          assert.ok(waited < 10_000, 'both changes waiting for the row');
          await sleep(20);
        }
        await locker.rollbackTransaction();
        answers = await Promise.all(changes);
      } finally {
        await locker.release();
      }
      const statuses = answers.map((r) => r.status);
      assert.deepEqual([...statuses].sort(), [204, 401]);
      const loser = answers.find((r) => r.status === 401)!;
      assert.deepEqual(loser.body, { statusCode: 401, error: 'Unauthorized', message: 'Current password is required and must be correct' });
      const won = statuses[0] === 204 ? 'first-new-long-password' : 'second-new-long-password';
      const lost = statuses[0] === 204 ? 'second-new-long-password' : 'first-new-long-password';
      assert.equal((await t.http.post('/api/v1/auth/login').send({ email: user.email, password: lost })).status, 401);
      assert.equal((await t.http.post('/api/v1/auth/login').send({ email: user.email, password: won })).status, 200);
      assert.equal((await auditRows(t.db, { userId: user.id, type: 'PASSWORD_CHANGED' })).length, 1);
      const failed = await auditRows(t.db, { userId: user.id, type: 'LOGIN_FAILED' });
      assert.deepEqual(
        failed.map((e) => [e.session_id, e.metadata]),
        [
          [tokens.sessionId, { method: 'current_password', action: 'password_change', reason: 'password_changed' }],
          [null, { method: 'email', reason: 'wrong_password' }],
        ],
      );
    });

    it('never expires a password: one set ten years ago still logs in, and asks for no change (ASVS 6.2.10)', async () => {
      const user = await registerUser(t.http);
      await t.db.query(`UPDATE users SET created_at = now() - interval '10 years', updated_at = now() - interval '10 years' WHERE id = $1`, [
        user.id,
      ]);
      const res = await t.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password });
      assert.equal(res.status, 200);
      assert.deepEqual(Object.keys(res.body as object).sort(), [
        'accessToken',
        'expiresIn',
        'refreshToken',
        'sessionExpiresAt',
        'sessionId',
        'tokenType',
      ]);
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(res.body))).status, 200);
    });

    it('verifies the password exactly as received: no case folding, no trimming', async () => {
      const user = await registerUser(t.http, { password: 'Exact Password 12' });
      // Four wrong variants: one fewer than the throttle allows per identifier.
      for (const password of ['exact password 12', 'EXACT PASSWORD 12', ' Exact Password 12', 'Exact Password 12\n']) {
        const res = await t.http.post('/api/v1/auth/login').send({ email: user.email, password });
        assert.equal(res.status, 401, JSON.stringify(password));
      }
      assert.equal((await t.http.post('/api/v1/auth/login').send({ email: user.email, password: 'Exact Password 12' })).status, 200);
    });

    it('answers 400 for both identifiers, neither, or unknown fields', async () => {
      const user = await registerUser(t.http);
      for (const body of [
        { email: user.email, username: user.username, password: user.password },
        { password: user.password },
        { email: user.email, password: user.password, remember: true },
      ]) {
        const res = await t.http.post('/api/v1/auth/login').send(body);
        assert.equal(res.status, 400, JSON.stringify(body));
      }
    });
  });

  describe('authenticated requests', () => {
    it('accept only Authorization: Bearer with a valid access token', async () => {
      const { tokens } = await registerAndLogin(t.http);
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).status, 200);
      assert.equal((await t.http.get('/api/v1/users/me')).status, 401);
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', tokens.accessToken)).status, 401);
      assert.equal((await t.http.get(`/api/v1/users/me?access_token=${tokens.accessToken}`)).status, 401);
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${tokens.refreshToken}`)).status, 401);
    });

    it('refuse tampered, unsigned and foreign-typed tokens', async () => {
      const { user, tokens } = await registerAndLogin(t.http);
      const [h, p, s] = tokens.accessToken.split('.');
      const payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
      const forged = Buffer.from(JSON.stringify({ ...payload, sub: user.id, exp: payload.exp + 3600 })).toString('base64url');
      const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'at+jwt' })).toString('base64url');
      const jwtTyp = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url');
      for (const token of [`${h}.${forged}.${s}`, `${none}.${p}.`, `${jwtTyp}.${p}.${s}`, `${h}.${p}.${s.slice(0, -2)}xx`]) {
        const res = await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${token}`);
        assert.equal(res.status, 401, token);
      }
    });
  });

  describe('refresh', () => {
    it('rotates the refresh token, extends the idle deadline but never the absolute one, and audits TOKEN_REFRESH', async () => {
      const { user, tokens } = await registerAndLogin(t.http);
      const before = await sessionRow(t.db, tokens.sessionId);
      // Move the idle deadline back so an extension is visible.
      await t.db.query(`UPDATE sessions SET idle_expires_at = now() + interval '5 minutes' WHERE id = $1`, [tokens.sessionId]);
      const res = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
      assert.equal(res.status, 200);
      assert.equal(res.headers['cache-control'], 'no-store');
      assert.notEqual(res.body.refreshToken, tokens.refreshToken);
      assert.equal(res.body.sessionId, tokens.sessionId);
      const afterRow = await sessionRow(t.db, tokens.sessionId);
      assert.notEqual(afterRow!.refresh_token_hash, before!.refresh_token_hash);
      assert.equal(afterRow!.absolute_expires_at.getTime(), before!.absolute_expires_at.getTime());
      assert.ok(afterRow!.idle_expires_at.getTime() > Date.now() + 50 * 60 * 1000);
      assert.equal(res.body.sessionExpiresAt, before!.absolute_expires_at.toISOString());
      // The new pair works.
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(res.body))).status, 200);
      const events = await auditRows(t.db, { userId: user.id, type: 'TOKEN_REFRESH' });
      assert.equal(events.length, 1);
      assert.equal(events[0].session_id, tokens.sessionId);
      assert.ok(!JSON.stringify(events).includes(tokens.refreshToken));
    });

    it('ends the whole session when a rotated refresh token is presented again', async () => {
      const { user, tokens } = await registerAndLogin(t.http);
      const first = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
      assert.equal(first.status, 200);
      const reuse = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
      assert.equal(reuse.status, 401);
      const row = await sessionRow(t.db, tokens.sessionId);
      assert.equal(row!.end_reason, 'refresh_token_reuse');
      // Both the thief's and the legitimate holder's tokens are dead now.
      assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: first.body.refreshToken })).status, 401);
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(first.body))).status, 401);
      const events = await auditRows(t.db, { userId: user.id, type: 'REFRESH_TOKEN_REUSE' });
      assert.equal(events.length, 1);
      assert.equal(events[0].metadata.reason, 'refresh_token_reuse');
      // A second reuse does not record a second end.
      await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
      assert.equal((await auditRows(t.db, { userId: user.id, type: 'REFRESH_TOKEN_REUSE' })).length, 1);
    });

    it('sends every statement of its transaction prepared: PostgreSQL plans them once per connection, not at every refresh', async () => {
      const { tokens } = await registerAndLogin(t.http);
      /** The statements of each query runner opened meanwhile: a prepared one is pg's { name, text }. */
      const spy = recordQueryRunners(t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN));
      try {
        assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken })).status, 200);
      } finally {
        spy.restore();
      }
      const [refresh, ...others] = spy.runners.filter((sent) => sent.some((s) => /\bUPDATE sessions\s+SET refresh_token_hash/.test(textOf(s))));
      assert.equal(others.length, 0);
      const work = refresh.filter((s) => !/^(START TRANSACTION|COMMIT)$/.test(textOf(s)));
      // The rotation with its rotated token's record, and the audit event (one statement on the
      // instance that wrote the login): two round trips between BEGIN and COMMIT.
      assert.equal(work.length, 2, work.map(textOf).join('\n'));
      assert.match(textOf(work[0]), /UPDATE sessions[\s\S]*INSERT INTO rotated_refresh_tokens/);
      assert.deepEqual(
        work.filter((s) => typeof s === 'string'),
        [],
      );
    });

    it('lets only one of several concurrent refreshes with the same token succeed', async () => {
      const { tokens } = await registerAndLogin(t.http);
      const results = await Promise.all(
        Array.from({ length: 5 }, () => t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken })),
      );
      const statuses = results.map((r) => r.status).sort();
      assert.deepEqual(statuses, [200, 401, 401, 401, 401]);
      const [{ count }] = await t.db.query('SELECT count(*)::int AS count FROM rotated_refresh_tokens WHERE session_id = $1', [tokens.sessionId]);
      assert.equal(count, 1);
    });

    it('answers 401 for an unknown or malformed refresh token and 400 for a missing one', async () => {
      assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: 'A'.repeat(43) })).status, 401);
      assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: 'short' })).status, 401);
      assert.equal((await t.http.post('/api/v1/auth/refresh').send({})).status, 400);
    });
  });

  describe('logout', () => {
    it('ends the session at once: the access and refresh tokens both stop working', async () => {
      const { user, tokens } = await registerAndLogin(t.http);
      const res = await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens));
      assert.equal(res.status, 204);
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).status, 401);
      assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken })).status, 401);
      assert.equal((await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens))).status, 401);
      const row = await sessionRow(t.db, tokens.sessionId);
      assert.equal(row!.end_reason, 'logout');
      assert.ok(row!.ended_at);
      const events = await auditRows(t.db, { userId: user.id, type: 'LOGOUT' });
      assert.equal(events.length, 1);
      assert.equal(events[0].session_id, tokens.sessionId);
    });

    it('leaves the user’s other sessions alone', async () => {
      const user = await registerUser(t.http);
      const a = await login(t.http, user);
      const b = await login(t.http, user);
      await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(a)).expect(204);
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(b))).status, 200);
    });
  });
});
