import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { dataSourceOptions, MIGRATIONS } from '../src/database/data-source.options';
import { runMigrationsLocked } from '../src/database/migrate';
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
