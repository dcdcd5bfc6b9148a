import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Pool, PoolClient } from 'pg';
import { DataSource } from 'typeorm';
import { dataSourceOptions } from '../src/database/data-source.options';
import { databaseForThisFile } from './helpers/test-app';

/**
 * A server FATAL (57P01 when PostgreSQL restarts or an operator terminates the backend) on a
 * pooled connection that nobody listens to at that moment. pg-pool listens only while a
 * client is idle and TypeORM only while a query runner holds it (its driver checks a client
 * out bare at boot, for instance); pg turns a FATAL that arrives between queries into an
 * 'error' event, and an 'error' event without a listener ends the process. Seen as an
 * instance that exited during the multi-instance restart test.
 */
describe('a FATAL on a pooled connection nobody listens to (e2e)', () => {
  let dataSource: DataSource;

  before(async () => {
    dataSource = await new DataSource(dataSourceOptions(await databaseForThisFile())).initialize();
  });

  after(async () => {
    await dataSource?.destroy();
  });

  it('does not end the process: the connection fails for its holder and the pool opens another', async () => {
    const pool = (dataSource.driver as unknown as { master: Pool }).master;
    const client: PoolClient = await pool.connect();
    // Checked out: pg-pool has removed its idle listener, and no query runner added one.
    const [{ pid }] = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows;
    // Not events.once: it listens for 'error' too, which would hide what this test looks for.
    const ended = new Promise((resolve) => client.once('end', resolve));
    const [{ terminated }] = await dataSource.query<Array<{ terminated: boolean }>>('SELECT pg_terminate_backend($1) AS terminated', [pid]);
    assert.equal(terminated, true);
    // Without a listener of the client's own, the FATAL's 'error' event is thrown here, as an
    // uncaught exception that fails this file (and would end a service instance).
    await ended;
    await assert.rejects(client.query('SELECT 1'));
    client.release(new Error('terminated'));
    assert.deepEqual(await dataSource.query('SELECT 1 AS one'), [{ one: 1 }]);
  });
});
