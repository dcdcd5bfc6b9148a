import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { SessionsCleanupTask } from '../src/sessions/sessions-cleanup.task';
import { SessionsService } from '../src/sessions/sessions.service';
import { bearer, login, registerUser, sleep } from './helpers/factories';
import { createTestApp, TestApp } from './helpers/test-app';

/**
 * Every way a session can end, on one user, then one check over the database: every ended
 * session has a known reason and exactly one audit event carrying it.
 */
describe('every end has a reason and exactly one event (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ SESSION_MAX_PER_USER: '4', SESSION_IDLE_TTL: '3', SESSION_ABSOLUTE_TTL: '600' });
  });
  after(async () => {
    await t.close();
  });

  it('records each of the eight reasons once', async () => {
    const user = await registerUser(t.http);
    const admin = await registerUser(t.http);
    await t.db.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
    const ended = new Map<string, string>();

    const logout = await login(t.http, user);
    await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(logout)).expect(204);
    ended.set(logout.sessionId, 'logout');

    const [revoked, actor] = [await login(t.http, user), await login(t.http, user)];
    await t.http.delete(`/api/v1/sessions/${revoked.sessionId}`).set('Authorization', bearer(actor)).expect(204);
    ended.set(revoked.sessionId, 'revoked');

    const reused = await login(t.http, user);
    await t.http.post('/api/v1/auth/refresh').send({ refreshToken: reused.refreshToken }).expect(200);
    await t.http.post('/api/v1/auth/refresh').send({ refreshToken: reused.refreshToken }).expect(401);
    ended.set(reused.sessionId, 'refresh_token_reuse');

    const idleByRequest = await login(t.http, user);
    const idleByCleanup = await login(t.http, user);
    const absolute = await login(t.http, user);
    await t.db.query(
      `UPDATE sessions SET idle_expires_at = now() - interval '1 second', absolute_expires_at = now() - interval '1 second' WHERE id = $1`,
      [absolute.sessionId],
    );
    await sleep(3200); // idleByRequest and idleByCleanup pass their 3 s idle timeout
    await t.http.get('/api/v1/users/me').set('Authorization', bearer(idleByRequest)).expect(401);
    ended.set(idleByRequest.sessionId, 'idle_timeout');
    await t.app.get(SessionsCleanupTask).handleTick();
    ended.set(idleByCleanup.sessionId, 'idle_timeout');
    ended.set(actor.sessionId, 'idle_timeout'); // idle during the wait as well
    ended.set(absolute.sessionId, 'absolute_timeout');

    // No session is active now: four logins reach the limit of 4, a fifth goes beyond.
    const [limited] = [await login(t.http, user), await login(t.http, user), await login(t.http, user), await login(t.http, user)];
    await t.db.query(`UPDATE sessions SET last_seen_at = now() - interval '1 hour' WHERE id = $1`, [limited.sessionId]);
    const current = await login(t.http, user);
    ended.set(limited.sessionId, 'session_limit');

    const beforePasswordChange = await t.db.query(`SELECT id FROM sessions WHERE user_id = $1 AND ended_at IS NULL AND id <> $2`, [
      user.id,
      current.sessionId,
    ]);
    const newPassword = 'another-long-password';
    await t.http
      .put('/api/v1/users/me/password')
      .set('Authorization', bearer(current))
      .send({ currentPassword: user.password, newPassword })
      .expect(204);
    for (const { id } of beforePasswordChange) ended.set(id, 'password_changed');

    const byAdmin = await login(t.http, { email: user.email, password: newPassword });
    const adminTokens = await login(t.http, admin);
    await t.http.delete(`/api/v1/admin/users/${user.id}/sessions`).set('Authorization', bearer(adminTokens)).expect(200);
    ended.set(byAdmin.sessionId, 'revoked_by_admin');
    ended.set(current.sessionId, 'revoked_by_admin');

    const rows: Array<{ id: string; end_reason: string; events: Array<{ type: string; reason: string }> }> = await t.db.query(
      `SELECT s.id, s.end_reason,
              coalesce(json_agg(json_build_object('type', e.type, 'reason', e.metadata->>'reason'))
                       FILTER (WHERE e.id IS NOT NULL AND e.metadata ? 'reason'), '[]') AS events
         FROM sessions s
         LEFT JOIN audit_events e ON e.session_id = s.id
        WHERE s.user_id = $1 AND s.ended_at IS NOT NULL
        GROUP BY s.id, s.end_reason`,
      [user.id],
    );
    const byId = new Map(rows.map((r) => [r.id, r]));
    assert.deepEqual(
      new Set(ended.values()),
      new Set([
        'logout',
        'revoked',
        'revoked_by_admin',
        'password_changed',
        'refresh_token_reuse',
        'idle_timeout',
        'absolute_timeout',
        'session_limit',
      ]),
    );
    for (const [id, reason] of ended) {
      const row = byId.get(id);
      assert.ok(row, `session ${id} (${reason}) ended`);
      assert.equal(row.end_reason, reason, id);
      assert.equal(row.events.length, 1, `${reason}: ${JSON.stringify(row.events)}`);
      assert.equal(row.events[0].reason, reason);
    }
    // No ended session of this user lacks its event.
    assert.equal(rows.length, ended.size);
  });

  it("an end that waited past a session's idle deadline leaves that session to the cleanup and its true reason", async () => {
    const user = await registerUser(t.http);
    const [lapsing, live] = [await login(t.http, user), await login(t.http, user)];
    await t.db.query(`UPDATE sessions SET idle_expires_at = now() + interval '500 milliseconds' WHERE id = $1`, [lapsing.sessionId]);
    // The end's transaction starts before the deadline and reaches the sessions after it (as one that waited for a lock does).
    const ended = await t.db.transaction(async (em) => {
      await em.query(`SELECT pg_sleep(1)`);
      return t.app.get(SessionsService).endSessions({ userId: user.id }, { reason: 'revoked_by_admin', event: 'SESSION_REVOKED' }, em);
    });
    assert.deepEqual(ended, [live.sessionId], 'until 0.24.2 the lapsed session was taken as revoked too');
    await t.app.get(SessionsCleanupTask).handleTick();
    const [row] = await t.db.query(`SELECT end_reason FROM sessions WHERE id = $1`, [lapsing.sessionId]);
    assert.equal(row.end_reason, 'idle_timeout');
  });
});
