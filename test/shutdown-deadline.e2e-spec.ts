import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client } from 'pg';
import { deploymentEnv, ServiceProcess } from './helpers/service-process';
import { emptyDatabase } from './helpers/test-app';

/** How the process ended: its exit code, or the signal that ended it. */
function ended(service: ServiceProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; afterMs: number }> {
  const sent = Date.now();
  return new Promise((resolve) => service.child.once('exit', (code, signal) => resolve({ code, signal, afterMs: Date.now() - sent })));
}

/**
 * SHUTDOWN_TIMEOUT, on the real service process: a shutdown that finishes ends by the signal as
 * before; one held up past the deadline (its last write of the request counts waits on a lock
 * another session holds) logs so and exits with 1 instead of waiting on.
 */
describe('the shutdown deadline (e2e, real processes)', () => {
  let url: string;
  let env: Record<string, string>;
  let db: Client;

  before(async () => {
    url = await emptyDatabase();
    env = deploymentEnv(url, { SHUTDOWN_TIMEOUT: '2' });
    db = new Client({ connectionString: url });
    await db.connect();
  });
  after(async () => {
    await db.end();
  });

  it('ends by the signal, without the deadline line, when the shutdown finishes', async () => {
    const service = await ServiceProcess.start(env);
    await service.ready();
    assert.equal((await service.request('/api/v1/users/me')).status, 401);
    const exit = ended(service);
    service.child.kill('SIGTERM');
    assert.deepEqual({ ...(await exit), afterMs: 0 }, { code: null, signal: 'SIGTERM', afterMs: 0 });
    assert.doesNotMatch(service.logs, /did not finish/);
  });

  // The other signals a platform stops a process with: each runs the same shutdown (seen by its
  // last write of the request counts, which only the shutdown makes with a sync interval this
  // long) and ends the process by that signal.
  for (const signal of ['SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR2'] as const) {
    it(`shuts down gracefully on ${signal} too, and ends by it`, async () => {
      await db.query('DELETE FROM rate_limits');
      const service = await ServiceProcess.start({ ...env, RATE_LIMIT_SYNC_INTERVAL: '60000' });
      await service.ready();
      assert.equal((await service.request('/api/v1/users/me')).status, 401);
      const exit = ended(service);
      service.child.kill(signal);
      assert.deepEqual({ ...(await exit), afterMs: 0 }, { code: null, signal, afterMs: 0 }, service.logs);
      assert.doesNotMatch(service.logs, /did not finish/);
      const {
        rows: [{ n }],
      } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM rate_limits');
      assert.equal(n, 1, "the shutdown wrote the request's count");
    });
  }

  it('logs and exits with 1 once SHUTDOWN_TIMEOUT has passed, when a step of the shutdown waits on', async () => {
    const service = await ServiceProcess.start(env);
    await service.ready();
    // A request the per-IP limit counts: its count is written at shutdown, into rate_limits.
    assert.equal((await service.request('/api/v1/users/me')).status, 401);
    await db.query('BEGIN');
    try {
      await db.query('LOCK TABLE rate_limits IN ACCESS EXCLUSIVE MODE');
      const exit = ended(service);
      service.child.kill('SIGTERM');
      const { code, signal, afterMs } = await exit;
      assert.deepEqual({ code, signal }, { code: 1, signal: null }, service.logs);
      // The deadline (2 s), not the statement timeout (15 s), ended it.
      assert.ok(afterMs >= 2000 && afterMs < 10_000, `exited after ${afterMs} ms`);
      assert.match(service.logs, /The shutdown on SIGTERM did not finish within 2 s \(SHUTDOWN_TIMEOUT\): exiting with 1/);
    } finally {
      await db.query('ROLLBACK');
    }
  });
});
