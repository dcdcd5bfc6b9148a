import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client, type Pool } from 'pg';
import type { PostgresDriver } from 'typeorm/driver/postgres/PostgresDriver.js';
import { HealthController } from '../src/health/health.controller';
import { createTestApp, databaseForThisFile, TestApp } from './helpers/test-app';

/** DATABASE_POOL_MAX sizes each instance's pool (it was 20, fixed). */
describe('DATABASE_POOL_MAX (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ DATABASE_POOL_MAX: '12' });
  });
  after(async () => {
    await t.close();
  });

  it("sizes the service's pool, and the service runs within it", async () => {
    const pool = (t.db.driver as PostgresDriver).master as Pool;
    assert.equal(pool.options.max, 12);
    // Forty statements at once that each hold a connection: twelve run, the others wait their
    // turn, none is refused. (Readiness probes would not do: a burst of them shares one check.)
    const watcher = new Client({ connectionString: await databaseForThisFile() });
    await watcher.connect();
    try {
      let done = false;
      const held = Promise.all(Array.from({ length: 40 }, () => t.db.query(`SELECT pg_sleep(0.1) AS slept`))).finally(() => (done = true));
      let most = 0;
      while (!done) {
        const {
          rows: [{ n }],
        } = await watcher.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
            WHERE datname = current_database() AND state = 'active' AND query LIKE 'SELECT pg_sleep(0.1) AS slept%'`,
        );
        most = Math.max(most, n);
      }
      assert.equal((await held).length, 40);
      assert.equal(most, 12, 'the pool ran twelve at once, no more');
    } finally {
      await watcher.end();
    }
  });

  it('checks the database once for readiness probes that come while a check runs (a burst of probes takes no pool from the requests)', async () => {
    // Both looked up on the instance at each probe (the route's handler itself is bound at boot).
    const health = t.app.get(HealthController) as unknown as { checkDatabase: () => Promise<unknown>; checkDatabaseOnce: () => Promise<unknown> };
    const [check, once] = [health.checkDatabase.bind(health), health.checkDatabaseOnce.bind(health)];
    let checks = 0;
    let arrived = 0;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    health.checkDatabase = async () => {
      checks++;
      await gate; // held until every probe has arrived
      return check();
    };
    health.checkDatabaseOnce = () => {
      arrived++;
      return once();
    };
    try {
      const probes = Promise.all(Array.from({ length: 40 }, () => t.http.get('/health/ready')));
      for (let waited = 0; arrived < 40; waited += 10) {
        assert.ok(waited < 10_000, `${arrived} probes arrived`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      release();
      assert.deepEqual(
        (await probes).map((a) => a.status),
        Array<number>(40).fill(200),
      );
      assert.equal(checks, 1, 'one check for the forty');
      // Once done, nothing is reused: the next probe checks again.
      assert.equal((await t.http.get('/health/ready')).status, 200);
      assert.equal(checks, 2);
    } finally {
      Object.assign(health, { checkDatabase: check, checkDatabaseOnce: once });
    }
  });
});
