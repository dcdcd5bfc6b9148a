import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { cliDataSourceOptions, dataSourceOptions, MIGRATIONS } from '../src/database/data-source.options';
import { MIGRATION_LOCK_KEY, runMigrationsLocked } from '../src/database/migrate';
import { databaseForThisFile } from './helpers/test-app';

describe('migrations (e2e)', () => {
  let url: string;
  before(async () => {
    url = await databaseForThisFile();
  });

  it('apply under the advisory lock once, even when several instances boot together', async () => {
    const sources = await Promise.all([1, 2, 3].map(() => new DataSource(dataSourceOptions(url)).initialize()));
    try {
      await Promise.all(sources.map((s) => runMigrationsLocked(s)));
      const rows: Array<{ name: string }> = await sources[0].query('SELECT name FROM migrations ORDER BY id');
      assert.deepEqual(
        rows.map((r) => r.name),
        MIGRATIONS.map((m) => new m().name),
      );
    } finally {
      await Promise.all(sources.map((s) => s.destroy()));
    }
  });

  it("wait for another instance's migrations longer than the pool's statement_timeout, and give the connection back with it", async () => {
    const options = dataSourceOptions(url);
    const source = await new DataSource({ ...options, extra: { ...options.extra, statement_timeout: 500 } }).initialize();
    const holder = new Client({ connectionString: url });
    await holder.connect();
    try {
      await holder.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]); // another instance, migrating
      let settled = false;
      const migrating = runMigrationsLocked(source).finally(() => (settled = true));
      await new Promise((resolve) => setTimeout(resolve, 1500)); // three statement timeouts
      assert.equal(settled, false, 'still waiting for the lock, not failed');
      await holder.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
      await migrating;
      const shown: Array<{ statement_timeout: string }> = await source.query('SHOW statement_timeout');
      assert.equal(shown[0].statement_timeout, '500ms');
    } finally {
      await holder.end();
      await source.destroy();
    }
  });

  it("run from the TypeORM CLI without the pool's statement_timeout (npm run migration:*)", async () => {
    const cli = await new DataSource(cliDataSourceOptions(url)).initialize();
    const app = await new DataSource(dataSourceOptions(url)).initialize();
    try {
      assert.equal(((await cli.query('SHOW statement_timeout')) as Array<{ statement_timeout: string }>)[0].statement_timeout, '0');
      assert.equal(((await app.query('SHOW statement_timeout')) as Array<{ statement_timeout: string }>)[0].statement_timeout, '15s');
    } finally {
      await cli.destroy();
      await app.destroy();
    }
  });

  it('revert cleanly to an empty schema and apply again', async () => {
    const source = await new DataSource(dataSourceOptions(url)).initialize();
    try {
      await runMigrationsLocked(source);
      for (let i = 0; i < MIGRATIONS.length; i++) await source.undoLastMigration({ transaction: 'each' });
      const client = new Client({ connectionString: url });
      await client.connect();
      try {
        const { rows } = await client.query<{ table_name: string }>(
          `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> 'migrations'`,
        );
        assert.deepEqual(rows, []);
      } finally {
        await client.end();
      }
      await runMigrationsLocked(source);
      const [{ count }] = await source.query('SELECT count(*)::int AS count FROM migrations');
      assert.equal(count, MIGRATIONS.length);
    } finally {
      await source.destroy();
    }
  });
});
