import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { dataSourceOptions } from './data-source.options';
import { ADVISORY_LOCK_LOST, LOCK_TAKEN, withSessionAdvisoryLock } from './advisory-lock';
import { sql } from './sql';

const KEY = '4242424242424242';

describe('withSessionAdvisoryLock (a real database)', () => {
  let dataSource: DataSource;
  before(async () => {
    dataSource = await new DataSource({ ...dataSourceOptions(process.env.DATABASE_URL!), logging: false, logger: undefined }).initialize();
  });
  after(async () => {
    await dataSource.destroy();
  });

  it('runs the work alone and lets the lock go after it', async () => {
    const inner = await withSessionAdvisoryLock(dataSource, KEY, () => withSessionAdvisoryLock(dataSource, KEY, async () => 'twice'));
    assert.equal(inner, LOCK_TAKEN, 'another connection does not get it meanwhile');
    assert.equal(await withSessionAdvisoryLock(dataSource, KEY, async () => 'after'), 'after');
  });

  it("fails a run whose lock was no longer its connection's at the end, as behind a transaction-pooling proxy", async () => {
    // The unlock then lands on a server connection that never held the lock (answering false):
    // here the work lets it go itself, which the unlock at the end sees the same way.
    const run = withSessionAdvisoryLock(dataSource, KEY, async (runner) => {
      await sql(runner.manager, 'SELECT pg_advisory_unlock($1)', [KEY]);
      return 'done';
    });
    await assert.rejects(run, { message: ADVISORY_LOCK_LOST });
  });

  it("keeps the work's own failure, whatever the unlock finds", async () => {
    const run = withSessionAdvisoryLock(dataSource, KEY, async (runner) => {
      await sql(runner.manager, 'SELECT pg_advisory_unlock($1)', [KEY]);
      throw new Error('the work failed');
    });
    await assert.rejects(run, { message: 'the work failed' });
  });

  it('lets the lock go after a work that failed inside a transaction it left aborted', async () => {
    const run = withSessionAdvisoryLock(dataSource, KEY, async (runner) => {
      await runner.startTransaction();
      await runner.query('SELECT 1/0').catch(() => undefined); // the transaction is aborted from here on
      throw new Error('the work failed');
    });
    await assert.rejects(run, { message: 'the work failed' });
    // Asked on a connection of its own: the pool could hand back the very connection that holds it.
    const other = new Client({ connectionString: process.env.DATABASE_URL });
    await other.connect();
    try {
      const { rows } = await other.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [KEY]);
      assert.equal(rows[0].locked, true, 'the pooled connection kept the lock');
      await other.query('SELECT pg_advisory_unlock($1)', [KEY]);
    } finally {
      await other.end();
    }
  });
});
