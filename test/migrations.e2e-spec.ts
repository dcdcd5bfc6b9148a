import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { cliDataSourceOptions, dataSourceOptions, MIGRATIONS } from '../src/database/data-source.options';
import { MIGRATION_LOCK_KEY, runMigrationsLocked } from '../src/database/migrate';
import { SessionAuthTime1765500000000 } from '../src/database/migrations/1765500000000-SessionAuthTime';
import { databaseForThisFile, freshDatabase } from './helpers/test-app';

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

  it('give existing sessions their creation time as auth_time, and new rows now() by default', async () => {
    const db = await freshDatabase();
    const before = MIGRATIONS.slice(0, MIGRATIONS.indexOf(SessionAuthTime1765500000000));
    const old = await new DataSource({ ...dataSourceOptions(db), migrations: before }).initialize();
    try {
      await old.runMigrations();
      const [user] = await old.query(`INSERT INTO users (username, email, password_hash) VALUES ('old_one', 'old@example.test', 'x') RETURNING id`);
      // A session of the previous version, opened two hours ago.
      await old.query(
        `INSERT INTO sessions (user_id, created_at, idle_expires_at, absolute_expires_at, refresh_token_hash, refresh_expires_at)
         VALUES ($1, now() - interval '2 hours', now() + interval '1 hour', now() + interval '1 hour', repeat('a', 64), now() + interval '1 hour')`,
        [user.id],
      );
    } finally {
      await old.destroy();
    }
    const source = await new DataSource(dataSourceOptions(db)).initialize();
    try {
      await runMigrationsLocked(source);
      const [migrated] = await source.query(`SELECT auth_time = created_at AS same, auth_time < now() - interval '1 hour' AS old FROM sessions`);
      assert.deepEqual(migrated, { same: true, old: true });
      // What an instance of the previous version inserts during a rolling deploy: no auth_time.
      const [fresh] = await source.query(
        `INSERT INTO sessions (user_id, idle_expires_at, absolute_expires_at, refresh_token_hash, refresh_expires_at)
         SELECT id, now() + interval '1 hour', now() + interval '1 hour', repeat('b', 64), now() + interval '1 hour' FROM users
         RETURNING auth_time = now() AS fresh`,
      );
      assert.equal(fresh.fresh, true);
      const [column] = await source.query(
        `SELECT is_nullable FROM information_schema.columns WHERE table_name = 'sessions' AND column_name = 'auth_time'`,
      );
      assert.equal(column.is_nullable, 'NO');
    } finally {
      await source.destroy();
    }
  });
});
