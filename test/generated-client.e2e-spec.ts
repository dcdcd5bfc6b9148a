import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import createClient, { type Client } from 'openapi-fetch';
import { newUserInput } from './helpers/factories';
import { createTestApp, TestApp } from './helpers/test-app';
// Generated from the committed openapi.json by `npm run generate:client` (npm test runs it first).
import type { paths } from './generated/openapi';

/**
 * A REST client as another team would make one: openapi-typescript's types from openapi.json,
 * openapi-fetch to call them, checked by the strict compiler. If the document and the server
 * disagree (a path, a field, a status), this test stops compiling or fails.
 */
describe('a client generated from openapi.json (e2e)', () => {
  let t: TestApp;
  let client: Client<paths>;
  before(async () => {
    t = await createTestApp();
    await t.app.listen(0, '127.0.0.1');
    client = createClient<paths>({ baseUrl: `http://127.0.0.1:${(t.app.getHttpServer().address() as AddressInfo).port}` });
  });
  after(async () => {
    await t.close();
  });

  it('registers, logs in, reads the profile and sessions, refreshes and logs out', async () => {
    const input = newUserInput();
    const registered = await client.POST('/api/v1/auth/register', { body: input });
    assert.equal(registered.response.status, 201);
    assert.equal(registered.data?.username, input.username);

    const login = await client.POST('/api/v1/auth/login', { body: { email: input.email, password: input.password } });
    assert.ok(login.data, JSON.stringify(login.error));
    const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });

    const me = await client.GET('/api/v1/users/me', { headers: bearer(login.data.accessToken) });
    assert.equal(me.data?.email, input.email);
    const whoami = await client.GET('/api/v1/auth/session', { headers: bearer(login.data.accessToken) });
    assert.equal(whoami.data?.sessionId, login.data.sessionId);

    const sessions = await client.GET('/api/v1/sessions', { headers: bearer(login.data.accessToken) });
    assert.deepEqual(
      sessions.data?.map((s) => [s.id, s.current]),
      [[login.data.sessionId, true]],
    );

    const refreshed = await client.POST('/api/v1/auth/refresh', { body: { refreshToken: login.data.refreshToken } });
    assert.ok(refreshed.data, JSON.stringify(refreshed.error));
    assert.equal(refreshed.data.expiresIn > 0, true);

    const out = await client.POST('/api/v1/auth/logout', { headers: bearer(refreshed.data.accessToken) });
    assert.equal(out.response.status, 204);
    const gone = await client.GET('/api/v1/users/me', { headers: bearer(refreshed.data.accessToken) });
    assert.equal(gone.response.status, 401);
    assert.equal(gone.error?.statusCode, 401);
    assert.equal(gone.response.headers.get('www-authenticate'), 'Bearer error="invalid_token"');
  });

  it('gets the documented 400 for a body the document forbids (an unknown property)', async () => {
    const input = newUserInput();
    // The generated type refuses the extra property at compile time too: additionalProperties false.
    const body = { ...input, admin: true } as unknown as { username: string; email: string; password: string };
    const refused = await client.POST('/api/v1/auth/register', { body });
    assert.equal(refused.response.status, 400);
    assert.equal(refused.error?.statusCode, 400);
  });
});
