import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { KeyRotationTask } from '../src/keys/key-rotation.task';
import { LoginThrottleService } from '../src/login-throttle/login-throttle.service';
import { PgThrottlerStorage } from '../src/rate-limit/pg-throttler.storage';
import { RateLimitPruneTask } from '../src/rate-limit/rate-limit-prune.task';
import { SessionsCleanupTask } from '../src/sessions/sessions-cleanup.task';
import { CapturingLogger } from './helpers/capturing-logger';
import { metric } from './helpers/service-process';
import { createTestApp, freshDatabase, TestApp } from './helpers/test-app';

/**
 * The background jobs whose work counters cannot tell "failing" from "nothing to do": each run
 * that fails is counted, and each that runs to its end stamps the job's last success. A job is
 * made to fail for real: the table it works on is renamed away for one run.
 */
describe("background jobs' failures and last success in /metrics (e2e)", () => {
  let t: TestApp;
  before(async () => {
    // A database of its own: the tables are renamed under it.
    // Requests counted (the tests' apps count none by default), with no background sync within a
    // test (the longest interval): only the runs below sync.
    t = await createTestApp(
      { DATABASE_URL: await freshDatabase(), RATE_LIMIT_PER_MINUTE: '600', RATE_LIMIT_SYNC_INTERVAL: '60000' },
      { logger: new CapturingLogger() },
    );
  });
  after(async () => {
    await t.close();
  });

  const jobs: Array<{ job: string; table: string; run: () => Promise<unknown> }> = [
    { job: 'session_cleanup', table: 'sessions', run: () => t.app.get(SessionsCleanupTask).handleTick() },
    { job: 'login_counters_prune', table: 'login_throttle', run: () => t.app.get(LoginThrottleService).prune() },
    { job: 'rate_limits_prune', table: 'rate_limits', run: () => t.app.get(RateLimitPruneTask).prune() },
    // One request the per-IP limit counts, then the sync that writes it.
    {
      job: 'rate_limits_sync',
      table: 'rate_limits',
      run: async () => {
        await t.http.get('/api/v1/users/me');
        await t.app.get(PgThrottlerStorage).sync();
      },
    },
    { job: 'signing_key_maintenance', table: 'signing_keys', run: () => t.app.get(KeyRotationTask).handleTick() },
  ];

  for (const { job, table, run } of jobs) {
    it(`${job}: a failed run is counted and leaves the last success where it was; the next run that works stamps it`, async () => {
      const scrape = async () => {
        const text = (await t.http.get('/metrics')).text;
        return {
          failures: metric(text, `sessionary_job_failures_total{job="${job}"}`),
          lastSuccess: metric(text, `sessionary_job_last_success_timestamp_seconds{job="${job}"}`),
        };
      };
      const before = await scrape();
      assert.ok(Number.isFinite(before.failures) && Number.isFinite(before.lastSuccess), JSON.stringify(before));

      await t.db.query(`ALTER TABLE ${table} RENAME TO ${table}_away`);
      try {
        await run(); // never throws: the job logs and counts its failure
      } finally {
        await t.db.query(`ALTER TABLE ${table}_away RENAME TO ${table}`);
      }
      const failed = await scrape();
      assert.deepEqual(failed, { failures: before.failures + 1, lastSuccess: before.lastSuccess });

      const started = Date.now() / 1000;
      await run();
      const worked = await scrape();
      assert.equal(worked.failures, failed.failures);
      assert.ok(worked.lastSuccess >= Math.floor(started), `${worked.lastSuccess} < ${started}`);
    });
  }
});
