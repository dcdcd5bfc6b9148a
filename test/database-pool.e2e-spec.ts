import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Pool } from 'pg';
import type { PostgresDriver } from 'typeorm/driver/postgres/PostgresDriver.js';
import { HealthController } from '../src/health/health.controller';
import { createTestApp, TestApp } from './helpers/test-app';

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
    // Forty requests at once through twelve connections: they wait their turn, none is refused.
    const answers = await Promise.all(Array.from({ length: 40 }, () => t.http.get('/health/ready')));
    assert.deepEqual(
      answers.map((a) => a.status),
      Array<number>(40).fill(200),
    );
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
