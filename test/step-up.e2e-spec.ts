import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import * as jwt from 'jsonwebtoken';
import { KeyRing } from '../src/keys/key-ring.service';
import { SessionsService } from '../src/sessions/sessions.service';
import { auditRows, sessionRow } from './helpers/db';
import { bearer, login, registerAndLogin, registerUser, sleep, Tokens } from './helpers/factories';
import { jwtClaims, STEP_UP_CHALLENGE, staleTokens } from './helpers/step-up';
import { createTestApp, TestApp } from './helpers/test-app';

type Answer = { status: number; body: unknown; headers: Record<string, string | undefined> };

/** A step-up refusal: 401 in Nest's error shape with exactly RFC 9470's challenge. */
function assertStepUp(res: Answer, challenge = STEP_UP_CHALLENGE): void {
  assert.equal(res.status, 401, JSON.stringify(res.body));
  assert.equal(res.headers['www-authenticate'], challenge);
  const body = res.body as { statusCode: unknown; error: unknown; message: unknown };
  assert.deepEqual([body.statusCode, body.error, typeof body.message], [401, 'Unauthorized', 'string']);
}

const activeSessionIds = async (t: TestApp, userId: string): Promise<string[]> =>
  (await t.db.query(`SELECT id FROM sessions WHERE user_id = $1 AND ended_at IS NULL ORDER BY id`, [userId])).map((r: { id: string }) => r.id);

describe('step-up, RFC 9470 (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => {
    await t.close();
  });

  const reauthenticate = (tokens: Tokens, password: string) =>
    t.http.post('/api/v1/auth/reauthenticate').set('Authorization', bearer(tokens)).set('User-Agent', 'step-up-test/1').send({ password });

  it("gives a login's access token the session's auth_time, the login's time, and refresh carries it forward", async () => {
    const user = await registerUser(t.http);
    const before = Math.floor(Date.now() / 1000);
    const tokens = await login(t.http, user);
    const claims = jwtClaims(tokens.accessToken);
    const row = (await sessionRow(t.db, tokens.sessionId))!;
    assert.equal(row.auth_time.getTime(), row.created_at.getTime(), 'a login counts as the authentication');
    assert.equal(claims.auth_time, Math.floor(row.auth_time.getTime() / 1000));
    assert.ok(Number(claims.auth_time) >= before - 1 && Number(claims.auth_time) <= Math.ceil(Date.now() / 1000));

    await sleep(1100);
    const refreshed = (await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken }).expect(200)).body as Tokens;
    assert.equal(jwtClaims(refreshed.accessToken).auth_time, claims.auth_time);
    assert.ok(Number(jwtClaims(refreshed.accessToken).iat) > Number(claims.iat));
  });

  it('refuses a stale token on DELETE /sessions with the RFC 9470 challenge, changing nothing; after reauthenticate the route answers 200', async () => {
    const user = await registerUser(t.http);
    const other = await login(t.http, user);
    const stale = await staleTokens(t, await login(t.http, user));
    const eventsBefore = (await auditRows(t.db, { userId: user.id })).length;

    assertStepUp(await t.http.delete('/api/v1/sessions').set('Authorization', bearer(stale)));
    assert.equal((await sessionRow(t.db, other.sessionId))!.ended_at, null);
    assert.equal((await auditRows(t.db, { userId: user.id })).length, eventsBefore, 'a refusal records nothing');
    // The session itself is fine: routes without a step-up rule answer.
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(stale))).status, 200);

    const authTimeBefore = (await sessionRow(t.db, stale.sessionId))!.auth_time;
    const res = await reauthenticate(stale, user.password);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.headers['cache-control'], 'no-store');
    const fresh = res.body as Tokens;
    assert.deepEqual(Object.keys(fresh).sort(), ['accessToken', 'expiresIn', 'refreshToken', 'sessionExpiresAt', 'sessionId', 'tokenType']);
    assert.equal(fresh.sessionId, stale.sessionId, 'the same session goes on');
    assert.equal(fresh.tokenType, 'Bearer');
    assert.notEqual(fresh.refreshToken, stale.refreshToken);
    const row = (await sessionRow(t.db, stale.sessionId))!;
    assert.ok(row.auth_time.getTime() > authTimeBefore.getTime() + 3_000_000, 'auth_time is now, an hour later than before');
    assert.equal(jwtClaims(fresh.accessToken).auth_time, Math.floor(row.auth_time.getTime() / 1000));
    assert.equal(jwtClaims(fresh.accessToken).sid, stale.sessionId);

    const [event] = await auditRows(t.db, { sessionId: stale.sessionId, type: 'REAUTHENTICATED' });
    assert.equal(event.user_id, user.id);
    assert.match(String(event.ip_address), /^(::ffff:)?127\.0\.0\.1$|^::1$/);
    assert.equal(event.user_agent, 'step-up-test/1');

    const revoked = await t.http.delete('/api/v1/sessions').set('Authorization', bearer(fresh));
    assert.equal(revoked.status, 200);
    assert.deepEqual(revoked.body, { revoked: 1 });
    assert.equal((await sessionRow(t.db, other.sessionId))!.end_reason, 'revoked');
    // The old access token is still valid for its session, but still not recent.
    assertStepUp(await t.http.delete('/api/v1/sessions').set('Authorization', bearer(stale)));

    // The refresh token held before the reauthentication was rotated out: presenting it is reuse.
    assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: stale.refreshToken })).status, 401);
    assert.equal((await sessionRow(t.db, stale.sessionId))!.end_reason, 'refresh_token_reuse');
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', bearer(fresh))).status, 401);
  });

  it('answers a wrong password with 401 and LOGIN_FAILED, and changes nothing else', async () => {
    const user = await registerUser(t.http);
    const stale = await staleTokens(t, await login(t.http, user));
    const before = (await sessionRow(t.db, stale.sessionId))!;
    const res = await reauthenticate(stale, `${user.password}x`);
    assert.equal(res.status, 401);
    assert.equal(res.body.message, 'Current password is required and must be correct');
    // A wrong password is no fault of the token: the bare scheme (as for a login), not a step-up's challenge.
    assert.equal(res.headers['www-authenticate'], 'Bearer');
    const failed = await auditRows(t.db, { sessionId: stale.sessionId, type: 'LOGIN_FAILED' });
    assert.equal(failed.length, 1);
    assert.deepEqual(failed[0].metadata, { method: 'current_password', action: 'reauthenticate' });
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'REAUTHENTICATED' })).length, 0);
    const afterwards = (await sessionRow(t.db, stale.sessionId))!;
    assert.deepEqual([afterwards.auth_time, afterwards.refresh_token_hash], [before.auth_time, before.refresh_token_hash]);
    assertStepUp(await t.http.delete('/api/v1/sessions').set('Authorization', bearer(stale)));
    // The refresh token was not rotated: it still works.
    assert.equal((await t.http.post('/api/v1/auth/refresh').send({ refreshToken: stale.refreshToken })).status, 200);
  });

  it('settles a reauthentication racing a refresh of the same token: one rotation after the other, or reuse', async () => {
    for (let i = 0; i < 5; i++) {
      const user = await registerUser(t.http);
      const tokens = await login(t.http, user);
      const [reauth, refresh] = await Promise.all([
        reauthenticate(tokens, user.password),
        t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken }),
      ]);
      // The reauthentication always wins or comes second: it rotates whatever token is current.
      assert.equal(reauth.status, 200, JSON.stringify(reauth.body));
      assert.equal((await auditRows(t.db, { sessionId: tokens.sessionId, type: 'REAUTHENTICATED' })).length, 1);
      const row = (await sessionRow(t.db, tokens.sessionId))!;
      if (refresh.status === 200) {
        // The refresh came first: its token was rotated out by the reauthentication.
        assert.equal(row.ended_at, null);
        assert.equal(row.refresh_token_hash, createHash('sha256').update(reauth.body.refreshToken).digest('hex'));
      } else {
        // The reauthentication came first: the refresh presented a rotated token, which is reuse.
        assert.equal(refresh.status, 401);
        assert.equal(row.end_reason, 'refresh_token_reuse');
      }
    }
  });

  it('answers 400 for a bad body and 401 without a bearer token', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    for (const body of [{}, { password: 42 }, { password: user.password, extra: 1 }, { password: 'x'.repeat(513) }]) {
      const res = await t.http.post('/api/v1/auth/reauthenticate').set('Authorization', bearer(tokens)).send(body);
      assert.equal(res.status, 400, JSON.stringify(body));
    }
    const anonymous = await t.http.post('/api/v1/auth/reauthenticate').send({ password: user.password });
    assert.equal(anonymous.status, 401);
    assert.equal(anonymous.headers['www-authenticate'], 'Bearer');
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'LOGIN_FAILED' })).length, 0);
  });

  it('refuses to renew a session that ended since the request was let in', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens)).expect(204);
    const ended = (await sessionRow(t.db, tokens.sessionId))!;
    await assert.rejects(
      t.app.get(SessionsService).reauthenticate({ userId: user.id, sessionId: tokens.sessionId }, { ipAddress: null, userAgent: null }),
      {
        status: 401,
      },
    );
    const row = (await sessionRow(t.db, tokens.sessionId))!;
    assert.deepEqual([row.auth_time, row.refresh_token_hash], [ended.auth_time, ended.refresh_token_hash]);
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'REAUTHENTICATED' })).length, 0);
  });

  it('changes the email with a recent authentication alone, or with currentPassword; neither: the RFC 9470 401', async () => {
    const recent = await registerAndLogin(t.http);
    const ok = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', bearer(recent.tokens))
      .send({ email: `new_${recent.user.email}` });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal(ok.body.email, `new_${recent.user.email}`);
    // A password that is sent is checked, even when it is not needed.
    const wrong = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', bearer(recent.tokens))
      .send({ email: `newer_${recent.user.email}`, currentPassword: 'not-the-password' });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers['www-authenticate'], 'Bearer');

    const user = await registerUser(t.http);
    const stale = await staleTokens(t, await login(t.http, user));
    const refused = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', bearer(stale))
      .send({ email: `new_${user.email}` });
    assertStepUp(refused);
    const [row] = await t.db.query('SELECT email FROM users WHERE id = $1', [user.id]);
    assert.equal(row.email, user.email);
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'PROFILE_UPDATED' })).length, 0);
    assert.equal((await auditRows(t.db, { userId: user.id, type: 'LOGIN_FAILED' })).length, 0);
    // The username needs no step-up.
    assert.equal(
      (
        await t.http
          .patch('/api/v1/users/me')
          .set('Authorization', bearer(stale))
          .send({ username: `${user.username}_x` })
      ).status,
      200,
    );
    const withPassword = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', bearer(stale))
      .send({ email: `new_${user.email}`, currentPassword: user.password });
    assert.equal(withPassword.status, 200);
    assert.equal(withPassword.body.email, `new_${user.email}`);
  });

  it("refuses an admin's stale revocation with the RFC 9470 401, after the role check", async () => {
    const admin = await registerUser(t.http);
    await t.db.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
    const adminTokens = await staleTokens(t, await login(t.http, admin));
    const victim = await registerAndLogin(t.http);
    assertStepUp(await t.http.delete(`/api/v1/admin/users/${victim.user.id}/sessions`).set('Authorization', bearer(adminTokens)));
    assert.equal((await sessionRow(t.db, victim.tokens.sessionId))!.ended_at, null);
    // Reading needs no step-up.
    assert.equal((await t.http.get(`/api/v1/admin/users/${victim.user.id}/sessions`).set('Authorization', bearer(adminTokens))).status, 200);
    // Not an admin: 403 first, whatever the age of the authentication.
    const stranger = await staleTokens(t, (await registerAndLogin(t.http)).tokens);
    assert.equal((await t.http.delete(`/api/v1/admin/users/${victim.user.id}/sessions`).set('Authorization', bearer(stranger))).status, 403);

    const fresh = (await reauthenticate(adminTokens, admin.password).expect(200)).body as Tokens;
    const res = await t.http.delete(`/api/v1/admin/users/${victim.user.id}/sessions`).set('Authorization', bearer(fresh));
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { revoked: 1 });
    assert.equal((await sessionRow(t.db, victim.tokens.sessionId))!.end_reason, 'revoked_by_admin');
  });

  it('ends another session only after a recent authentication (or the rule on DELETE /sessions would be worked around one by one); logging out needs none', async () => {
    const user = await registerUser(t.http);
    const other = await login(t.http, user);
    const stale = await staleTokens(t, await login(t.http, user));
    assertStepUp(await t.http.delete(`/api/v1/sessions/${other.sessionId}`).set('Authorization', bearer(stale)));
    // An id that is not the caller's is refused alike: the rule reveals nothing about it.
    assertStepUp(await t.http.delete(`/api/v1/sessions/${randomUUID()}`).set('Authorization', bearer(stale)));
    assert.equal((await sessionRow(t.db, other.sessionId))!.ended_at, null);

    const fresh = (await reauthenticate(stale, user.password).expect(200)).body as Tokens;
    assert.equal((await t.http.delete(`/api/v1/sessions/${other.sessionId}`).set('Authorization', bearer(fresh))).status, 204);
    assert.equal((await sessionRow(t.db, other.sessionId))!.end_reason, 'revoked');

    const leaving = await staleTokens(t, await login(t.http, user));
    assert.equal((await t.http.delete(`/api/v1/sessions/${leaving.sessionId}`).set('Authorization', bearer(leaving))).status, 204);
    assert.equal((await sessionRow(t.db, leaving.sessionId))!.end_reason, 'logout');
  });

  it('takes the current password in the request instead of a recent authentication (API.md): ending another session, all others, and an admin revocation', async () => {
    const user = await registerUser(t.http);
    const [one, two] = [await login(t.http, user), await login(t.http, user)];
    const stale = await staleTokens(t, await login(t.http, user));
    const del = (path: string, body?: object) => {
      const req = t.http.delete(path).set('Authorization', bearer(stale));
      return body === undefined ? req : req.send(body);
    };
    // A wrong one is a 401 that ends nothing, audited as a failed current password with its action.
    const wrong = await del(`/api/v1/sessions/${one.sessionId}`, { currentPassword: `${user.password}x` });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers['www-authenticate'], 'Bearer');
    assert.equal((await t.http.delete('/api/v1/sessions').set('Authorization', bearer(stale)).send({ currentPassword: 'nope' })).status, 401);
    assert.deepEqual(
      (await auditRows(t.db, { sessionId: stale.sessionId, type: 'LOGIN_FAILED' })).map((e) => e.metadata),
      [
        { method: 'current_password', action: 'end_session' },
        { method: 'current_password', action: 'end_other_sessions' },
      ],
    );
    // Anything else in the body is a 400, as on every route with a body.
    assert.equal((await del('/api/v1/sessions', { currentPassword: user.password, also: 1 })).status, 400);
    assert.deepEqual(await activeSessionIds(t, user.id), [one.sessionId, two.sessionId, stale.sessionId].sort());

    assert.equal((await del(`/api/v1/sessions/${one.sessionId}`, { currentPassword: user.password })).status, 204);
    assert.equal((await sessionRow(t.db, one.sessionId))!.end_reason, 'revoked');
    const all = await del('/api/v1/sessions', { currentPassword: user.password });
    assert.deepEqual([all.status, all.body], [200, { revoked: 1 }]);
    assert.deepEqual(await activeSessionIds(t, user.id), [stale.sessionId]);

    const admin = await registerUser(t.http);
    await t.db.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
    const adminTokens = await staleTokens(t, await login(t.http, admin));
    const revoke = (body: object) => t.http.delete(`/api/v1/admin/users/${user.id}/sessions`).set('Authorization', bearer(adminTokens)).send(body);
    assert.equal((await revoke({ currentPassword: user.password })).status, 401, "the admin's own password, not the user's");
    const revoked = await revoke({ currentPassword: admin.password });
    assert.deepEqual([revoked.status, revoked.body], [200, { revoked: 1 }]);
    assert.equal((await sessionRow(t.db, stale.sessionId))!.end_reason, 'revoked_by_admin');
  });

  it('documents reauthenticate and the step-up 401 of each protected route, with a WWW-Authenticate pattern the real challenges match', async () => {
    type Response = { description: string; headers?: Record<string, { schema: { pattern?: string } }> };
    const doc = (await t.http.get('/docs-json')).body as {
      paths: Record<string, Record<string, { operationId: string; responses: Record<string, Response> }>>;
    };
    const reauth = doc.paths['/api/v1/auth/reauthenticate'].post;
    assert.equal(reauth.operationId, 'reauthenticate');
    assert.ok(reauth.responses['200'] && reauth.responses['401'] && reauth.responses['429']);
    for (const [path, method] of [
      ['/api/v1/sessions', 'delete'],
      ['/api/v1/sessions/{id}', 'delete'],
      ['/api/v1/admin/users/{id}/sessions', 'delete'],
      ['/api/v1/users/me', 'patch'],
    ]) {
      const unauthorized = doc.paths[path][method].responses['401'];
      assert.match(unauthorized.description, /step-up \(RFC 9470\)/, `${method} ${path}`);
      const pattern = new RegExp(unauthorized.headers!['WWW-Authenticate'].schema.pattern!);
      for (const challenge of ['Bearer', 'Bearer error="invalid_token"', STEP_UP_CHALLENGE]) assert.match(challenge, pattern, `${method} ${path}`);
    }
    // Routes without the rule keep the plain RFC 6750 401.
    assert.doesNotMatch(doc.paths['/api/v1/sessions'].get.responses['401'].description, /RFC 9470/);
  });

  it('treats a token without auth_time (issued before the upgrade) as never recently authenticated', async () => {
    const { user, tokens } = await registerAndLogin(t.http);
    await login(t.http, user);
    const { auth_time: _dropped, ...claims } = jwtClaims(tokens.accessToken);
    // Signed with the ring's current key, as our tokens are, only without the claim.
    const key = t.app.get(KeyRing).signingKey();
    const legacy = jwt.sign(claims, key.signingKey, { algorithm: key.algorithm, header: { alg: key.algorithm, typ: 'at+jwt', kid: key.kid } });
    assert.equal((await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${legacy}`)).status, 200);
    assertStepUp(await t.http.delete('/api/v1/sessions').set('Authorization', `Bearer ${legacy}`));
    assert.equal((await activeSessionIds(t, user.id)).length, 2);
  });
});

describe('step-up with REAUTH_MAX_AGE=2 (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ REAUTH_MAX_AGE: '2' });
  });
  after(async () => {
    await t.close();
  });

  it('refuses a login once REAUTH_MAX_AGE has passed (max_age says so), and lets it act again after reauthenticating', async () => {
    const user = await registerUser(t.http);
    await login(t.http, user);
    const tokens = await login(t.http, user);
    await sleep(3100);
    assertStepUp(
      await t.http.delete('/api/v1/sessions').set('Authorization', bearer(tokens)),
      'Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age=2',
    );
    assert.equal((await activeSessionIds(t, user.id)).length, 2);
    const fresh = (
      await t.http.post('/api/v1/auth/reauthenticate').set('Authorization', bearer(tokens)).send({ password: user.password }).expect(200)
    ).body as Tokens;
    const res = await t.http.delete('/api/v1/sessions').set('Authorization', bearer(fresh));
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body, { revoked: 1 });
  });
});
