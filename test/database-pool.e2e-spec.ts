import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Pool } from 'pg';
import type { PostgresDriver } from 'typeorm/driver/postgres/PostgresDriver.js';
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
});
