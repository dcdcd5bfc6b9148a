import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { LoggerService } from '@nestjs/common';
import { Client } from 'pg';
import { runCli, runCliProcess, runCliProcessWith, runCliWith } from './helpers/cli';
import { auditRows, sessionRow } from './helpers/db';
import { bearer, login, registerAndLogin, registerUser, sleep, TestUser, Tokens, uniqueName } from './helpers/factories';
import { monthStart, pastEvents, silentUser } from './helpers/audit-months';
import { partitionOf } from '../src/audit/audit-partitions.service';
import { AuditVerifierService } from '../src/audit/audit-verifier.service';
import { createTestApp, databaseForThisFile, freshDatabase, TestApp } from './helpers/test-app';

/** The CLI on this file's database (the app's audit key: its ROLE_CHANGED events join the same chains). */
const cli = async (...args: string[]) => runCli(await databaseForThisFile(), ...args);

/** Waits (up to 5 s) until `count` other statements of this database wait for a lock, and asserts they do. */
async function untilWaiting(holder: Client, count: number, what: string): Promise<void> {
  const waiting = async () =>
    (
      await holder.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`,
      )
    ).rows[0].n;
  for (let i = 0; i < 250 && (await waiting()) < count; i++) await sleep(20);
  assert.equal(await waiting(), count, what);
}

describe('admin (e2e)', () => {
  let t: TestApp;
  let admin: { user: TestUser; tokens: Tokens };
  before(async () => {
    t = await createTestApp();
    admin = await registerAndLogin(t.http);
    // As its own process once (the others run inside this one: test/helpers/cli.ts).
    const promoted = await runCliProcess(await databaseForThisFile(), 'promote-admin', admin.user.email);
    assert.equal(promoted.code, 0, promoted.stderr);
  });
  after(async () => {
    await t.close();
  });

  it('the CLI promotes and demotes, audits ROLE_CHANGED, and the change applies on the next request', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    assert.equal((await t.http.get('/api/v1/admin/audit').set('Authorization', bearer(tokens))).status, 403);

    const up = await cli('promote-admin', user.email.toUpperCase());
    assert.equal(up.code, 0, up.stderr);
    assert.match(up.stdout, /user -> admin/);
    const [row] = await t.db.query('SELECT role FROM users WHERE id = $1', [user.id]);
    assert.equal(row.role, 'admin');
    // Same token, same session: the role is read from the database on each request.
    assert.equal((await t.http.get('/api/v1/admin/audit').set('Authorization', bearer(tokens))).status, 200);
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens))).body.role, 'admin');

    const down = await cli('demote-admin', user.email);
    assert.equal(down.code, 0, down.stderr);
    assert.equal((await t.http.get('/api/v1/admin/audit').set('Authorization', bearer(tokens))).status, 403);
    const events = await auditRows(t.db, { userId: user.id, type: 'ROLE_CHANGED' });
    assert.deepEqual(
      events.map((e) => [e.metadata.from, e.metadata.to]),
      [
        ['user', 'admin'],
        ['admin', 'user'],
      ],
    );
    // Written by another process, they still chain with the app's events.
    const verification = await t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: verification.ok, reason: verification.reason }, { ok: true, reason: null });
  });

  it('the CLI ends every active session of every user, each with reason revoked_by_admin and one event', async () => {
    const a = await registerAndLogin(t.http);
    const b = await registerAndLogin(t.http);
    const extra = await login(t.http, b.user);
    // Without --confirm: how many would end, and nothing ended (until 0.23.0 it ended them all).
    const [{ before }] = await t.db.query(`SELECT count(*)::int AS before FROM sessions WHERE ended_at IS NULL AND idle_expires_at > now()`);
    const unconfirmed = await cli('end-all-sessions');
    assert.equal(unconfirmed.code, 2, unconfirmed.stderr);
    assert.match(
      unconfirmed.stderr,
      new RegExp(`active sessions \\(${before} now\\) on every instance at once: nothing ended\\. Run it again with --confirm`),
    );
    assert.equal(unconfirmed.stdout, '');
    for (const s of [a.tokens, b.tokens, extra]) assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(s))).status, 200);
    const res = await cli('end-all-sessions', '--confirm');
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /Ended \d+ active session/);
    for (const s of [a.tokens, b.tokens, extra]) {
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(s))).status, 401);
      assert.equal((await sessionRow(t.db, s.sessionId))!.end_reason, 'revoked_by_admin');
      const events = await auditRows(t.db, { sessionId: s.sessionId, type: 'SESSION_REVOKED' });
      assert.equal(events.length, 1);
      assert.deepEqual(events[0].metadata, { reason: 'revoked_by_admin', by: 'cli' });
    }
    const [{ active }] = await t.db.query(`SELECT count(*)::int AS active FROM sessions WHERE ended_at IS NULL AND idle_expires_at > now()`);
    assert.equal(active, 0);
    // The admin used by the other tests logs in again.
    admin.tokens = await login(t.http, admin.user);
  });

  it('the CLI refuses an unknown email, bad usage and a bad configuration with a non-zero exit', async () => {
    const unknown = await cli('promote-admin', 'nobody@nowhere.test');
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /No user/);
    const usage = await runCliProcess(await databaseForThisFile(), 'make-god', 'x@y.z');
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /Usage/);
    // A configuration the service would refuse: exit code 3 (could not run; 1 until 0.24.1), the
    // variable named, nothing done.
    const misconfigured = await runCliProcessWith({ BCRYPT_COST: 'lots' }, await databaseForThisFile(), 'end-all-sessions', '--confirm');
    assert.equal(misconfigured.code, 3, misconfigured.stderr);
    assert.match(misconfigured.stderr, /BCRYPT_COST/);
    assert.match(misconfigured.stderr, /^end-all-sessions: could not run \(exit code 3\)/m);
    assert.doesNotMatch(misconfigured.stdout, /Ended/);
    // No DATABASE_URL and no embedded database where DATA_DIR says: refused, none made (until
    // 0.23.0 a command made a new, empty cluster there and ended its 0 sessions), and in
    // development no secrets file made there either.
    const dataDir = mkdtempSync(join(tmpdir(), 'sessionary-cli-nodb-'));
    try {
      const nowhere = await runCliWith(
        { DATABASE_URL: undefined, DATA_DIR: dataDir, NODE_ENV: 'development', JWT_SECRET: undefined, PASSWORD_PEPPER: undefined },
        '',
        'end-all-sessions',
        '--confirm',
      );
      assert.equal(nowhere.code, 2, nowhere.stderr);
      assert.match(nowhere.stderr, new RegExp(`No DATABASE_URL, and no embedded database in ${join(dataDir, 'pg')}: nothing to run on`));
      assert.equal(nowhere.stdout, '');
      assert.deepEqual(readdirSync(dataDir), []);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('admin routes answer 403 to users and 401 without a session', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    for (const [method, path] of [
      ['get', `/api/v1/admin/users/${user.id}/sessions`],
      ['delete', `/api/v1/admin/users/${user.id}/sessions`],
      ['get', '/api/v1/admin/audit'],
    ] as const) {
      assert.equal((await t.http[method](path).set('Authorization', bearer(tokens))).status, 403, path);
      assert.equal((await t.http[method](path)).status, 401, path);
    }
    assert.equal((await sessionRow(t.db, tokens.sessionId))!.ended_at, null);
  });

  it("lists a user's active sessions, and answers 404 for an unknown user and 400 for a bad id", async () => {
    const user = await registerUser(t.http);
    const s1 = await login(t.http, user);
    const s2 = await login(t.http, user);
    const res = await t.http.get(`/api/v1/admin/users/${user.id}/sessions`).set('Authorization', bearer(admin.tokens));
    assert.equal(res.status, 200);
    assert.deepEqual(
      res.body.map((s: { id: string }) => s.id),
      [s2.sessionId, s1.sessionId],
    );
    const unknown = await t.http.get(`/api/v1/admin/users/${randomUUID()}/sessions`).set('Authorization', bearer(admin.tokens));
    assert.equal(unknown.status, 404);
    const bad = await t.http.get('/api/v1/admin/users/nope/sessions').set('Authorization', bearer(admin.tokens));
    assert.equal(bad.status, 400);
    const unknownRevoke = await t.http.delete(`/api/v1/admin/users/${randomUUID()}/sessions`).set('Authorization', bearer(admin.tokens));
    assert.equal(unknownRevoke.status, 404);
  });

  it("ends all of a user's sessions with reason revoked_by_admin, audited with the admin's id", async () => {
    const user = await registerUser(t.http);
    const sessions = [await login(t.http, user), await login(t.http, user)];
    const res = await t.http
      .delete(`/api/v1/admin/users/${user.id}/sessions`)
      .set('Authorization', bearer(admin.tokens))
      .set('User-Agent', 'admin-console/2.0');
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { revoked: 2 });
    for (const s of sessions) {
      assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(s))).status, 401);
      assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: s.refreshToken })).status, 401);
      assert.equal((await sessionRow(t.db, s.sessionId))!.end_reason, 'revoked_by_admin');
      const events = await auditRows(t.db, { sessionId: s.sessionId, type: 'SESSION_REVOKED' });
      assert.equal(events.length, 1);
      assert.equal(events[0].metadata.reason, 'revoked_by_admin');
      assert.equal(events[0].metadata.adminId, admin.user.id);
    }
    // The admin's own session is untouched.
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(admin.tokens))).status, 200);

    // The user reads that an admin ended them, and which (by id), but not the admin's address, browser or session...
    const again = await login(t.http, user);
    const own = await t.http.get('/api/v1/audit?type=SESSION_REVOKED').set('Authorization', bearer(again));
    assert.equal(own.status, 200);
    assert.equal(own.body.items.length, 2);
    for (const event of own.body.items as Array<{ ipAddress: unknown; userAgent: unknown; metadata: Record<string, unknown> }>) {
      assert.deepEqual([event.ipAddress, event.userAgent], [null, null]);
      assert.deepEqual(event.metadata, { reason: 'revoked_by_admin', adminId: admin.user.id });
    }
    // ...which admins still read, as recorded.
    const recorded = await t.http.get(`/api/v1/admin/audit?userId=${user.id}&type=SESSION_REVOKED`).set('Authorization', bearer(admin.tokens));
    assert.equal(recorded.body.items.length, 2);
    for (const event of recorded.body.items as Array<{ ipAddress: unknown; userAgent: unknown; metadata: Record<string, unknown> }>) {
      assert.equal(event.ipAddress, '127.0.0.1');
      assert.equal(event.userAgent, 'admin-console/2.0');
      assert.equal(event.metadata.bySessionId, admin.tokens.sessionId);
    }
  });

  it("two admins ending each other's sessions at once: one wins, the other gets 401 (its own session ended), never a deadlock's 500", async () => {
    const [first, second] = [await registerAndLogin(t.http), await registerAndLogin(t.http)];
    for (const a of [first, second]) {
      assert.equal((await cli('promote-admin', a.user.email)).code, 0);
      // The role reaches the session cache by NOTIFY: wait for it, so that both requests get past the guard.
      for (let i = 0; i < 100 && (await t.http.get('/api/v1/admin/audit?limit=1').set('Authorization', bearer(a.tokens))).status !== 200; i++)
        await sleep(20);
    }
    // Both requests wait behind the two users' rows, then go at once.
    const holder = new Client({ connectionString: await databaseForThisFile() });
    await holder.connect();
    let answers: number[];
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM users WHERE id = ANY($1) FOR UPDATE', [[first.user.id, second.user.id]]);
      const revoke = (by: Tokens, of: TestUser) =>
        t.http
          .delete(`/api/v1/admin/users/${of.id}/sessions`)
          .set('Authorization', bearer(by))
          .then((r) => r);
      const both = Promise.all([revoke(first.tokens, second.user), revoke(second.tokens, first.user)]);
      await untilWaiting(holder, 2, 'both revocations wait behind the rows');
      await holder.query('COMMIT');
      answers = (await both).map((r) => r.status);
    } finally {
      await holder.end();
    }
    assert.deepEqual([...answers].sort(), [200, 401]);
  });

  it('refuses an admin demoted while the revocation waited (403, ACCESS_DENIED, nothing ended), and takes a user id in upper case', async () => {
    const demoted = await registerAndLogin(t.http);
    assert.equal((await cli('promote-admin', demoted.user.email)).code, 0);
    for (let i = 0; i < 100 && (await t.http.get('/api/v1/admin/audit?limit=1').set('Authorization', bearer(demoted.tokens))).status !== 200; i++)
      await sleep(20);
    const user = await registerUser(t.http);
    const victim = await login(t.http, user);
    // The demotion holds the admin's row while the request gets past RolesGuard (its role is
    // still admin: the change is not committed), and commits once the revocation waits for it.
    const holder = new Client({ connectionString: await databaseForThisFile() });
    await holder.connect();
    let res;
    try {
      await holder.query('BEGIN');
      await holder.query(`UPDATE users SET role = 'user' WHERE id = $1`, [demoted.user.id]);
      const revoking = t.http
        .delete(`/api/v1/admin/users/${user.id.toUpperCase()}/sessions`)
        .set('Authorization', bearer(demoted.tokens))
        .then((r) => r);
      await untilWaiting(holder, 1, 'the revocation waits behind the demotion');
      await holder.query('COMMIT');
      res = await revoking;
    } finally {
      await holder.end();
    }
    assert.equal(res.status, 403);
    assert.equal(res.body.message, 'Insufficient role');
    assert.equal((await sessionRow(t.db, victim.sessionId))!.ended_at, null, 'nothing ended');
    assert.equal((await auditRows(t.db, { sessionId: victim.sessionId, type: 'SESSION_REVOKED' })).length, 0);
    const denied = await auditRows(t.db, { sessionId: demoted.tokens.sessionId, type: 'ACCESS_DENIED' });
    assert.equal(denied.length, 1);
    assert.equal(denied[0].metadata.requiredRole, 'admin');
    assert.equal(denied[0].metadata.role, 'user');
    assert.equal(denied[0].metadata.route, '/api/v1/admin/users/:id/sessions');

    // The same id in upper case, by an admin: the user's sessions end, recorded under the id as stored.
    const upper = await t.http.delete(`/api/v1/admin/users/${user.id.toUpperCase()}/sessions`).set('Authorization', bearer(admin.tokens));
    assert.equal(upper.status, 200);
    assert.deepEqual(upper.body, { revoked: 1 });
    const revoked = await auditRows(t.db, { sessionId: victim.sessionId, type: 'SESSION_REVOKED' });
    assert.equal(revoked.length, 1);
    assert.equal(revoked[0].user_id, user.id);
  });

  it("shows a user's own ending of another session with its address and browser, as recorded", async () => {
    const user = await registerUser(t.http);
    const [first, second] = [await login(t.http, user), await login(t.http, user)];
    const ended = await t.http.delete(`/api/v1/sessions/${second.sessionId}`).set('Authorization', bearer(first)).set('User-Agent', 'test-agent/1.0');
    assert.equal(ended.status, 204);
    const own = await t.http.get('/api/v1/audit?type=SESSION_REVOKED').set('Authorization', bearer(first));
    const [event] = own.body.items as Array<{ ipAddress: unknown; userAgent: unknown; metadata: Record<string, unknown> }>;
    assert.equal(event.ipAddress, '127.0.0.1');
    assert.equal(event.userAgent, 'test-agent/1.0');
    assert.equal(event.metadata.bySessionId, first.sessionId);
  });

  it('logs who exported audit events and with which filters (the access log names only the route)', async () => {
    const logged: unknown[] = [];
    const logger: LoggerService = { log: (m: unknown) => void logged.push(m), warn: () => undefined, error: () => undefined };
    const other = await createTestApp({}, { logger });
    try {
      const { user } = await registerAndLogin(other.http);
      const res = await other.http
        .get(`/api/v1/admin/audit/export?userId=${user.id}&type=LOGIN&from=2026-01-01T00:00:00Z`)
        .set('Authorization', bearer(admin.tokens));
      assert.equal(res.status, 200);
      assert.deepEqual(
        logged.filter((m) => (m as { event?: string }).event === 'audit.export'),
        [
          {
            event: 'audit.export',
            adminId: admin.user.id,
            sessionId: admin.tokens.sessionId,
            filters: { from: '2026-01-01T00:00:00Z', to: null, userId: user.id, type: 'LOGIN', afterSeq: null },
          },
        ],
      );
    } finally {
      await other.close();
    }
  });

  it('runs one verification at a time: requests made while one runs share the next, started after they came', async () => {
    const verifier = t.app.get(AuditVerifierService);
    const verify = verifier.verify.bind(verifier);
    let runs = 0;
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const starts: number[] = [];
    verifier.verify = async (options) => {
      starts.push(Date.now());
      if (++runs === 1) await held; // the first run stays under way while the others come
      return verify(options);
    };
    try {
      const get = () =>
        t.http
          .get('/api/v1/admin/audit/verify')
          .set('Authorization', bearer(admin.tokens))
          .then((r) => r);
      const first = get();
      for (let i = 0; i < 100 && runs === 0; i++) await sleep(10);
      assert.equal(runs, 1, 'the first request started a run');
      const cameLater = Date.now();
      const others = [get(), get(), get(), get(), get()];
      await sleep(200);
      assert.equal(runs, 1, 'no second run while the first is under way');
      release();
      const answers = await Promise.all([first, ...others]);
      assert.deepEqual(
        answers.map((r) => [r.status, r.body.ok]),
        answers.map(() => [200, true]),
      );
      assert.equal(runs, 2, 'the five requests made meanwhile shared one run');
      assert.ok(starts[1] >= cameLater, 'their run started after they came');
      // And once nothing runs, a request starts its own.
      assert.equal((await get()).status, 200);
      assert.equal(runs, 3);
    } finally {
      verifier.verify = verify;
    }
  });

  it("reads any user's audit events, filtered by user and type, with userId on each", async () => {
    const { user } = await registerAndLogin(t.http);
    const res = await t.http.get(`/api/v1/admin/audit?userId=${user.id}&type=LOGIN`).set('Authorization', bearer(admin.tokens));
    assert.equal(res.status, 200);
    assert.equal(res.body.items.length, 1);
    assert.equal(res.body.items[0].userId, user.id);
    const all = await t.http.get('/api/v1/admin/audit?limit=100').set('Authorization', bearer(admin.tokens));
    assert.ok(new Set(all.body.items.map((e: { userId: string }) => e.userId)).size > 1);
    assert.equal((await t.http.get('/api/v1/admin/audit?userId=nope').set('Authorization', bearer(admin.tokens))).status, 400);
  });
});

// A database of its own: the command runs with settings under which any job would act at once.
describe('the CLI and the scheduled jobs (e2e)', () => {
  it("the CLI runs none of the service's scheduled jobs while a command runs, whatever its settings; it creates the months ahead", async () => {
    const url = await freshDatabase();
    const own = await createTestApp({ DATABASE_URL: url });
    const old = monthStart(5);
    const ahead = partitionOf(monthStart(-2)).name;
    let user: TestUser;
    let overdueSession: string;
    try {
      const signedIn = await registerAndLogin(own.http);
      user = signedIn.user;
      overdueSession = signedIn.tokens.sessionId;
      await own.db.query(`UPDATE sessions SET idle_expires_at = now() - interval '1 minute' WHERE id = $1`, [overdueSession]);
      await pastEvents(own, old, [{ userId: await silentUser(own.db, uniqueName('old')), type: 'LOGIN' }]);
      await own.db.query(`DROP TABLE "${ahead}"`);
    } finally {
      await own.close();
    }
    // One connection to look, one to hold a lock (pg_stat_activity stays as first read for the
    // rest of a transaction).
    const [db, locker] = [new Client({ connectionString: url }), new Client({ connectionString: url })];
    await Promise.all([db.connect(), locker.connect()]);
    try {
      const count = async (text: string) => (await db.query(text)).rows[0].n as number;
      // The user's row locked here keeps the command waiting, booted, for a few ticks of an
      // every-second cleanup, with the old month past its retention. (Not the checkpoint timer:
      // a checkpoint waits for older transactions to end, this lock's among them.)
      await locker.query('BEGIN');
      await locker.query('SELECT 1 FROM users WHERE id = $1 FOR UPDATE', [user.id]);
      const command = runCliProcessWith(
        {
          SESSION_CLEANUP_CRON: '* * * * * *',
          AUDIT_RETENTION_DAYS: String(Math.floor((Date.now() - partitionOf(old).to.getTime()) / 86_400_000)),
        },
        url,
        'promote-admin',
        user.email,
      );
      const waiting = `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`;
      let finished: { code: number; stderr: string } | undefined;
      void command.then((r) => (finished = r));
      const deadline = Date.now() + 30_000;
      while ((await count(waiting)) === 0) {
        assert.equal(finished, undefined, 'the command ended before it reached the locked row');
        assert.ok(Date.now() < deadline, 'the command reached the locked row');
        await sleep(20);
      }
      await sleep(2500);
      await locker.query('COMMIT');
      const result = await command;
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /user -> admin/);

      assert.equal(await count(`SELECT count(*)::int AS n FROM scheduled_job_runs`), 0, 'no cleanup tick claimed');
      assert.equal(
        (await db.query('SELECT ended_at FROM sessions WHERE id = $1', [overdueSession])).rows[0].ended_at,
        null,
        'the overdue session left',
      );
      assert.equal(await count(`SELECT count(*)::int AS n FROM "${partitionOf(old).name}"`), 1, 'the month past retention kept');
      // What it did do: its command (audited), and the month ahead its events could need.
      assert.equal(await count(`SELECT count(*)::int AS n FROM audit_events WHERE type = 'ROLE_CHANGED'`), 1);
      assert.equal(await count(`SELECT count(*)::int AS n FROM pg_class WHERE relname = '${ahead}'`), 1, 'the month ahead created again');
    } finally {
      await Promise.all([db.end(), locker.end()]);
    }
  });
});
