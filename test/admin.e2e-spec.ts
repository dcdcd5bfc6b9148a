import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { runCli } from './helpers/cli';
import { auditRows, sessionRow } from './helpers/db';
import { bearer, login, registerAndLogin, registerUser, TestUser, Tokens } from './helpers/factories';
import { AuditVerifierService } from '../src/audit/audit-verifier.service';
import { createTestApp, databaseForThisFile, TestApp } from './helpers/test-app';

/** The CLI on this file's database (the app's audit key: its ROLE_CHANGED events join the same chains). */
const cli = async (...args: string[]) => runCli(await databaseForThisFile(), ...args);

describe('admin (e2e)', () => {
  let t: TestApp;
  let admin: { user: TestUser; tokens: Tokens };
  before(async () => {
    t = await createTestApp();
    admin = await registerAndLogin(t.http);
    const promoted = await cli('promote-admin', admin.user.email);
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
    const res = await cli('end-all-sessions');
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

  it('the CLI refuses an unknown email and bad usage with a non-zero exit', async () => {
    const unknown = await cli('promote-admin', 'nobody@nowhere.test');
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /No user/);
    const usage = await cli('make-god', 'x@y.z');
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /Usage/);
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
    const res = await t.http.delete(`/api/v1/admin/users/${user.id}/sessions`).set('Authorization', bearer(admin.tokens));
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
