import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client } from 'pg';
import { UNAVAILABLE_BODY, UNAVAILABLE_RETRY_AFTER_SECONDS } from '../src/common/all-exceptions.filter';
import { OUTAGE_PROBE_INTERVAL_MS } from '../src/database/database-outage.monitor';
import { CapturingLogger } from './helpers/capturing-logger';
import { registerUser, sleep, type TestUser } from './helpers/factories';
import { createTestApp, freshDatabase, TestApp } from './helpers/test-app';

/**
 * A server that answers but takes no write: what a pool meets when a failover left its
 * connections on the old primary, now a standby, or when the database is set read-only for
 * maintenance. Made here with `default_transaction_read_only` on the file's own database and
 * the app's connections ended, so its pool reconnects into it.
 */
describe('a read-only database (e2e)', () => {
  let t: TestApp;
  let user: TestUser;
  let database: string;
  // On the server's maintenance database: a connection to the read-only one could not undo it.
  let admin: Client;
  const logger = new CapturingLogger();

  before(async () => {
    const url = await freshDatabase();
    database = new URL(url).pathname.slice(1);
    admin = new Client({ connectionString: Object.assign(new URL(url), { pathname: '/postgres' }).toString() });
    await admin.connect();
    t = await createTestApp({ DATABASE_URL: url }, { logger });
    user = await registerUser(t.http);
  });
  after(async () => {
    await setReadOnly(false);
    await t.close();
    await admin.end();
  });

  /** Sets the database's default and ends every connection to it (the app's pool and LISTEN connections reconnect into it). */
  async function setReadOnly(on: boolean): Promise<void> {
    await admin.query(`ALTER DATABASE "${database}" ${on ? 'SET default_transaction_read_only = on' : 'RESET default_transaction_read_only'}`);
    await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, [database]);
  }

  /** The answers to `send` until one has `status` (the first after the connections ended may meet a closed one), at most 50. */
  async function until(status: number, send: () => Promise<{ status: number }>): Promise<number[]> {
    const seen: number[] = [];
    for (let i = 0; i < 50; i++) {
      seen.push((await send()).status);
      if (seen.at(-1) === status) return seen;
      await sleep(100);
    }
    return seen;
  }

  it('answers writes 503 with Retry-After (not 500), says not ready, logs no stack, and serves again once writable', async () => {
    await setReadOnly(true);
    // The pool's connections are new ones to a server that is up and read-only (the first
    // queries after the termination may meet a broken one): what is asserted below is answered
    // by such a server, not by the termination.
    const readOnlyNow = async () => ((await t.db.query('SHOW transaction_read_only').catch(() => [])) as Array<{ transaction_read_only: string }>)[0];
    for (let i = 0; i < 50 && (await readOnlyNow())?.transaction_read_only !== 'on'; i++) await sleep(100);
    assert.deepEqual(await readOnlyNow(), { transaction_read_only: 'on' });

    const ready = await t.http.get('/health/ready');
    assert.equal(ready.status, 503, 'not ready on a working connection to a read-only server');
    assert.equal(ready.headers['retry-after'], String(UNAVAILABLE_RETRY_AFTER_SECONDS));
    assert.deepEqual(ready.body, UNAVAILABLE_BODY);

    const login = () => t.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password });
    const logins = await Promise.all([login(), login(), login()]);
    for (const res of logins) {
      assert.equal(res.status, 503, res.text);
      assert.equal(res.headers['retry-after'], String(UNAVAILABLE_RETRY_AFTER_SECONDS));
      assert.deepEqual(res.body, UNAVAILABLE_BODY);
    }
    assert.deepEqual(
      logger.lines.filter((l) => l.level === 'error' || /Unhandled error/.test(l.message)).map((l) => l.message),
      [],
      'a read-only server is an outage, not an error with a stack',
    );
    // The outage monitor's probe asks for writability: no "available again" while read-only.
    await sleep(OUTAGE_PROBE_INTERVAL_MS + 500);
    assert.deepEqual(
      logger.lines.filter((l) => /^Database available again/.test(l.message)).map((l) => l.message),
      [],
    );

    await setReadOnly(false);
    const back = await until(200, () => t.http.get('/health/ready'));
    assert.equal(back.at(-1), 200, `readiness: ${back.join(', ')}`);
    const again = await until(200, login);
    assert.equal(again.at(-1), 200, `login: ${again.join(', ')}`);
  });

  it('follows the server without a restart: a connection older than DATABASE_CONNECTION_LIFETIME is replaced by a new one', async () => {
    // No connection is ended here: as after a failover that left the old primary up as a
    // standby, only new connections find the server as it now is.
    const url = await freshDatabase();
    const name = new URL(url).pathname.slice(1);
    const app = await createTestApp({ DATABASE_URL: url, DATABASE_CONNECTION_LIFETIME: '1' }, { logger: new CapturingLogger() });
    const setDefault = (on: boolean) =>
      admin.query(`ALTER DATABASE "${name}" ${on ? 'SET default_transaction_read_only = on' : 'RESET default_transaction_read_only'}`);
    try {
      assert.equal((await app.http.get('/health/ready')).status, 200);
      await setDefault(true);
      const down = await until(503, () => app.http.get('/health/ready'));
      assert.equal(down.at(-1), 503, `readiness: ${down.join(', ')}`);
      await setDefault(false);
      const up = await until(200, () => app.http.get('/health/ready'));
      assert.equal(up.at(-1), 200, `readiness: ${up.join(', ')}`);
    } finally {
      await setDefault(false);
      await app.close();
    }
  });
});
