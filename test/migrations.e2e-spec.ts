import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { cliDataSourceOptions, dataSourceOptions, MIGRATIONS } from '../src/database/data-source.options';
import { DESTRUCTIVE_DOWNS, MIGRATION_LOCK_KEY, runMigrationsLocked, SESSIONARY_FUNCTIONS, SESSIONARY_TABLES } from '../src/database/migrate';
import { SessionAuthTime1765500000000 } from '../src/database/migrations/1765500000000-SessionAuthTime';
import { AuditUserIndexMerged1766700000000 } from '../src/database/migrations/1766700000000-AuditUserIndexMerged';
import { AuditUserTypeIndex1766800000000 } from '../src/database/migrations/1766800000000-AuditUserTypeIndex';
import { CounterKeysKeyed1767100000000 } from '../src/database/migrations/1767100000000-CounterKeysKeyed';
import { LoginKnownClientsAccount1767400000000 } from '../src/database/migrations/1767400000000-LoginKnownClientsAccount';
import { warnIfCaseFoldingIsAsciiOnly } from '../src/database/case-folding';
import { CapturingLogger } from './helpers/capturing-logger';
import { sleep } from './helpers/factories';
import { createTestApp, emptyDatabase } from './helpers/test-app';

describe('migrations (e2e)', () => {
  let url: string;
  before(async () => {
    url = await emptyDatabase();
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

  it("stop the service's boot at once on such a schema, leaving no connection behind: a refusal is not retried as a connection failure is", async () => {
    const other = await emptyDatabase();
    const client = new Client({ connectionString: other });
    await client.connect();
    try {
      await client.query('CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL)');
      await assert.rejects(createTestApp({ DATABASE_URL: other }), /Schema "public" already holds .+, and Sessionary has never migrated it/);
      // Retried as a connection failure, the boot took 27 s and left each try's pool open. A
      // backend leaves pg_stat_activity a moment after its client has closed the connection
      // (seen once in CI, on Node 24: one still listed right after the refusal), so the count
      // is read until it is 0, for at most 2 s: a pool left open keeps its connections.
      const others = async () =>
        (await client.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)).rows[0]
          .n as number;
      let left = await others();
      for (const until = Date.now() + 2000; left > 0 && Date.now() < until; left = await others()) await sleep(50);
      assert.equal(left, 0, 'connections left open by the boot');
    } finally {
      await client.end();
    }
  });

  it('warns of migrations in the database this version does not know (a newer version ran them: the code was rolled back)', async () => {
    const url = await emptyDatabase();
    const source = await new DataSource(dataSourceOptions(url)).initialize();
    const logger = new CapturingLogger();
    try {
      await runMigrationsLocked(source, { logger });
      assert.deepEqual(
        logger.lines.filter((l) => l.level === 'warn'),
        [],
        'none on a schema this version made',
      );
      await source.query(`INSERT INTO migrations ("timestamp", name) VALUES (1999999999999, 'FromTheFuture1999999999999')`);
      await runMigrationsLocked(source, { logger });
      const warnings = logger.lines.filter((l) => l.level === 'warn').map((l) => l.message);
      assert.equal(warnings.length, 1, warnings.join('\n'));
      assert.match(warnings[0], /^The database holds 1 migration\(s\) this version does not know \(FromTheFuture1999999999999\)/);
    } finally {
      await source.destroy();
    }
  });

  it('warns at boot of a database whose lower() folds ASCII letters only (LC_CTYPE C), not of one that folds every letter', async () => {
    for (const [ctype, warnings] of [
      ['C', 1],
      ['C.UTF-8', 0],
    ] as const) {
      const source = await new DataSource(dataSourceOptions(await emptyDatabase({ ctype }))).initialize();
      const logger = new CapturingLogger();
      try {
        await warnIfCaseFoldingIsAsciiOnly(source, logger);
        const lines = logger.lines.filter((l) => l.level === 'warn').map((l) => l.message);
        assert.equal(lines.length, warnings, `${ctype}: ${lines.join('\n')}`);
        if (warnings) assert.match(lines[0], /^The database lower-cases ASCII letters only \(LC_CTYPE C\): email addresses that differ/);
      } finally {
        await source.destroy();
      }
    }
  });

  it('says whom it waits for when another session holds the migration lock, and migrates once it is free', async () => {
    const url = await emptyDatabase();
    const holder = new Client({ connectionString: url, application_name: 'migration-lock-holder' });
    await holder.connect();
    const source = await new DataSource(dataSourceOptions(url)).initialize();
    const logger = new CapturingLogger();
    let migrating: Promise<void> | undefined;
    try {
      await holder.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
      const holderPid = (await holder.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      migrating = runMigrationsLocked(source, { logger, reportWaitAfterMs: 300 });
      for (let i = 0; i < 100 && !logger.lines.some((l) => l.level === 'warn'); i++) await sleep(50);
      const [line] = logger.lines.filter((l) => l.level === 'warn');
      assert.match(line?.message ?? '', new RegExp(`^Waiting for the migration lock, held by pid ${holderPid} \\(migration-lock-holder`));
      await holder.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
      await migrating;
      assert.equal((await holder.query('SELECT count(*)::int AS n FROM migrations')).rows[0].n, MIGRATIONS.length);
    } finally {
      // Ends the wait should an assertion have failed first: the data source is not destroyed under it.
      await holder.end();
      await migrating?.catch(() => undefined);
      await source.destroy();
    }
  });

  it('refuse a schema another application already uses, or none, saying what to do, and create nothing there', async () => {
    // Each with the tables it leaves: a name of Sessionary's first migration, another
    // application's migrations, and a name only a later migration creates (which, unrefused,
    // would stop the list halfway, the migrations before it committed).
    const anotherApplications: Array<[setup: string, tables: string[]]> = [
      ['CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL)', ['users']],
      [
        `CREATE TABLE migrations (id serial PRIMARY KEY, "timestamp" bigint NOT NULL, name varchar NOT NULL);
         INSERT INTO migrations ("timestamp", name) VALUES (1, 'HostInit1')`,
        ['migrations'],
      ],
      ['CREATE TABLE audit_events (id serial PRIMARY KEY, what text NOT NULL)', ['audit_events']],
      // A name only a later migration's trigger function takes (the audit chain's, 1765000000000).
      [
        `CREATE TABLE host_events (id serial PRIMARY KEY);
         CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'`,
        ['host_events'],
      ],
    ];
    for (const [setup, tables] of anotherApplications) {
      const other = await emptyDatabase();
      const client = new Client({ connectionString: other });
      await client.connect();
      await client.query(setup);
      const source = await new DataSource(dataSourceOptions(other)).initialize();
      try {
        await assert.rejects(
          runMigrationsLocked(source),
          /Schema "public" already holds .+, and Sessionary has never migrated it: give Sessionary a database of its own, or a schema \(CREATE SCHEMA sessionary/,
        );
        const { rows } = await client.query(
          `SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace ORDER BY 1`,
        );
        assert.deepEqual(
          rows.map((r: { relname: string }) => r.relname),
          tables,
        );
        // Nor an extension (TypeORM's driver installed uuid-ossp on connecting until 0.20.3).
        assert.deepEqual((await client.query(`SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'`)).rows, []);
      } finally {
        await source.destroy();
        await client.end();
      }
    }
    const nowhere = await new DataSource(
      dataSourceOptions(`${await emptyDatabase()}?options=${encodeURIComponent('-c search_path=nowhere')}`),
    ).initialize();
    try {
      await assert.rejects(runMigrationsLocked(nowhere), /search_path names no existing schema/);
    } finally {
      await nowhere.destroy();
    }
  });

  it("migrate a schema of Sessionary's own first on a search_path that also shows a host's schema with its own migrations table", async () => {
    const shared = await emptyDatabase();
    const client = new Client({ connectionString: shared });
    await client.connect();
    await client.query(`CREATE TABLE migrations (id serial PRIMARY KEY, "timestamp" bigint NOT NULL, name varchar NOT NULL);
       INSERT INTO migrations ("timestamp", name) VALUES (1600000000000, 'HostInit1600000000000');
       CREATE SCHEMA sessionary`);
    const source = await new DataSource(
      dataSourceOptions(`${shared}?options=${encodeURIComponent('-c search_path=sessionary,public')}`),
    ).initialize();
    try {
      await runMigrationsLocked(source); // refused as "another application's" until 0.24.1
      const ours: Array<{ name: string }> = await client.query('SELECT name FROM sessionary.migrations ORDER BY id').then((r) => r.rows);
      assert.deepEqual(
        ours.map((r) => r.name),
        MIGRATIONS.map((m) => new m().name),
      );
      assert.deepEqual(
        (await client.query('SELECT name FROM public.migrations')).rows,
        [{ name: 'HostInit1600000000000' }],
        "the host's left as it was",
      );
      await runMigrationsLocked(source); // and again, as every boot does
    } finally {
      await source.destroy();
      await client.end();
    }
  });

  it("know every table and function they create, so that another application's of any of those names is refused", async () => {
    const source = await new DataSource(dataSourceOptions(url)).initialize();
    try {
      await runMigrationsLocked(source);
      const rows: Array<{ relname: string }> = await source.query(
        `SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND NOT relispartition AND relnamespace = current_schema()::regnamespace
            AND relname <> 'migrations' ORDER BY 1`,
      );
      assert.deepEqual(
        rows.map((r) => r.relname),
        [...SESSIONARY_TABLES],
      );
      // Not an extension's (none is installed: installExtensions is off).
      const functions: Array<{ proname: string }> = await source.query(
        `SELECT proname FROM pg_proc p WHERE pronamespace = current_schema()::regnamespace
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
          ORDER BY 1`,
      );
      assert.deepEqual(
        functions.map((f) => f.proname),
        [...SESSIONARY_FUNCTIONS],
      );
    } finally {
      await source.destroy();
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

  it("run by `npm run migration:run` as at boot: it waits for an instance's migrations (the advisory lock), then applies every one", async () => {
    const target = await emptyDatabase();
    const holder = new Client({ connectionString: target });
    await holder.connect();
    try {
      await holder.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]); // an instance, migrating
      // A deploy step in production, with DATABASE_URL and none of the secrets: until 0.23.0
      // refused ("JWT_SECRET is missing"), by an uncaught exception with its stack.
      const noSecrets = { JWT_SECRET: undefined, PASSWORD_PEPPER: undefined, AUDIT_HMAC_KEY: undefined, KEY_ENCRYPTION_KEY: undefined };
      const cli = spawn(process.execPath, [join(__dirname, '..', 'src', 'database', 'migrate-cli.js')], {
        // A service's quiet LOG_LEVEL hides none of the command's result.
        env: { ...process.env, ...noSecrets, DATABASE_URL: target, NODE_ENV: 'production', LOG_LEVEL: 'error' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let output = '';
      cli.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      cli.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
      const exited = once(cli, 'exit');
      // Until 0.20.3 the TypeORM CLI's migration:run took no lock: it would be done by now.
      const waiting = async () =>
        Number(
          (await holder.query(`SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)).rows[0].n,
        );
      for (let i = 0; i < 100 && (await waiting()) === 0; i++) await sleep(50);
      await sleep(1000);
      assert.equal(cli.exitCode, null, `still waiting for the lock: ${output}`);
      assert.equal((await holder.query(`SELECT to_regclass('users') AS users`)).rows[0].users, null, 'nothing applied meanwhile');
      await holder.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
      const [code] = (await exited) as [number];
      assert.equal(code, 0, output);
      assert.equal(Number((await holder.query('SELECT count(*) AS n FROM migrations')).rows[0].n), MIGRATIONS.length);
      // Through the service's logger (LOG_FORMAT, JSON by default): Nest's plain text until 0.27.0.
      const applied = output
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as { level: string; context: string; message: string })
        .find((line) => line.context === 'Migrations');
      assert.equal(applied?.level, 'log', output);
      assert.match(applied.message, new RegExp(`^Applied ${MIGRATIONS.length} migration\\(s\\): `));
      // A setting refused is one line that names it, exit code 1, no stack.
      const refused = spawnSync(process.execPath, [join(__dirname, '..', 'src', 'database', 'migrate-cli.js')], {
        env: { ...process.env, ...noSecrets, DATABASE_URL: target, NODE_ENV: 'production', BCRYPT_COST: 'lots' },
        encoding: 'utf8',
      });
      assert.equal(refused.status, 1, refused.stdout + refused.stderr);
      assert.match(refused.stdout + refused.stderr, /BCRYPT_COST/);
      assert.doesNotMatch(refused.stdout + refused.stderr, /^\s+at /m);
      // A database that does not exist: the start's line, which server and what to check.
      const missing = new URL(target);
      missing.pathname = '/no_such_database_for_migrations';
      const unreachable = spawnSync(process.execPath, [join(__dirname, '..', 'src', 'database', 'migrate-cli.js')], {
        env: { ...process.env, ...noSecrets, DATABASE_URL: missing.toString(), LOG_FORMAT: 'text', LOG_LEVEL: 'fatal' },
        encoding: 'utf8',
      });
      assert.equal(unreachable.status, 1, unreachable.stdout + unreachable.stderr);
      assert.match(
        unreachable.stdout + unreachable.stderr,
        new RegExp(
          `PostgreSQL at ${missing.hostname.replace(/\./g, '\\.')}:${missing.port || '5432'} refused the connection: database "no_such_database_for_migrations" does not exist \\(SQLSTATE 3D000\\); create that database`,
        ),
      );
      assert.doesNotMatch(unreachable.stdout + unreachable.stderr, /^\s+at /m);
    } finally {
      await holder.end();
    }
  });

  it('reverted by `npm run migration:revert` only once --confirm names the last one applied, and under the advisory lock', async () => {
    const target = await emptyDatabase();
    const source = await new DataSource(dataSourceOptions(target)).initialize();
    await runMigrationsLocked(source);
    await source.destroy();
    const last = MIGRATIONS[MIGRATIONS.length - 1].name;
    const revert = (...args: string[]) => {
      const child = spawn(process.execPath, [join(__dirname, '..', 'src', 'database', 'migrate-cli.js'), 'revert', ...args], {
        env: { ...process.env, DATABASE_URL: target, NODE_ENV: 'test' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let output = '';
      child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
      const exited = once(child, 'exit').then(([code]) => ({ code: code as number, output }));
      return { child, exited };
    };
    const holder = new Client({ connectionString: target });
    await holder.connect();
    const applied = async () => (await holder.query<{ name: string }>('SELECT name FROM migrations ORDER BY id')).rows.map((r) => r.name);
    try {
      const unconfirmed = await revert().exited;
      assert.equal(unconfirmed.code, 2, unconfirmed.output);
      assert.match(unconfirmed.output, new RegExp(`Nothing reverted\\. The last migration applied is ${last}\\.`));
      assert.match(unconfirmed.output, new RegExp(`run again with --confirm ${last}`));
      const wrong = await revert('--confirm', MIGRATIONS[0].name).exited;
      assert.equal(wrong.code, 2, wrong.output);
      assert.equal((await revert('--confirm').exited).code, 2, 'a --confirm without a name');
      assert.equal((await applied()).length, MIGRATIONS.length, 'nothing reverted');

      await holder.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]); // an instance, migrating
      const confirmed = revert('--confirm', last);
      await sleep(1500);
      assert.equal(confirmed.child.exitCode, null, 'waits for the lock');
      assert.equal((await applied()).length, MIGRATIONS.length, 'nothing reverted meanwhile');
      await holder.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
      const done = await confirmed.exited;
      assert.equal(done.code, 0, done.output);
      assert.match(done.output, new RegExp(`Reverted ${last}`));
      assert.deepEqual(
        await applied(),
        MIGRATIONS.slice(0, -1).map((m) => m.name),
      );
      // One a newer version recorded: this version cannot revert it, and says so before anything.
      await holder.query(`INSERT INTO migrations ("timestamp", name) VALUES (1899999999999, 'FromTheFuture1899999999999')`);
      const future = await revert('--confirm', 'FromTheFuture1899999999999').exited;
      assert.equal(future.code, 2, future.output);
      assert.match(future.output, /FromTheFuture1899999999999, is not one of this version's: a newer version applied it/);
    } finally {
      await holder.end();
    }
    // The downs it warns of are migrations of this version.
    const names = MIGRATIONS.map((m) => m.name.replace(/\d+$/, ''));
    for (const name of Object.keys(DESTRUCTIVE_DOWNS)) assert.ok(names.includes(name), name);
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
        // Nor a function, sequence or type left behind (but the migrations table's own, and an extension's).
        const { rows: left } = await client.query<{ kind: string; name: string }>(
          `SELECT 'function' AS kind, proname AS name FROM pg_proc p WHERE pronamespace = 'public'::regnamespace
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
           UNION ALL
           SELECT 'sequence', relname FROM pg_class WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace AND relname <> 'migrations_id_seq'
           UNION ALL
           SELECT 'type', typname FROM pg_type t WHERE typnamespace = 'public'::regnamespace AND typtype IN ('e', 'c', 'd')
              AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)
           ORDER BY 1, 2`,
        );
        assert.deepEqual(left, []);
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
    const db = await emptyDatabase();
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

  it("merge a user's two audit indexes month by month without holding audit writes back, and finish a merge that stopped half way", async () => {
    const db = await emptyDatabase();
    const before = MIGRATIONS.slice(0, MIGRATIONS.indexOf(AuditUserIndexMerged1766700000000));
    const old = await new DataSource({ ...dataSourceOptions(db), migrations: before }).initialize();
    let last: string;
    const months = async (ds: DataSource): Promise<string[]> =>
      (
        await ds.query(
          `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1`,
        )
      ).map((r: { relname: string }) => r.relname);
    try {
      await old.runMigrations();
      // A run that stopped half way: the parent's index, and a later month's build failed (invalid).
      last = (await months(old)).at(-1)!;
      await old.query(`CREATE INDEX "IDX_audit_events_user_time_type" ON ONLY audit_events (user_id, created_at, seq, type)`);
      await old.query(`CREATE INDEX "${last}_user_time_type" ON "${last}" (user_id, created_at, seq, type)`);
      await old.query(`UPDATE pg_index SET indisvalid = false WHERE indexrelid = '"${last}_user_time_type"'::regclass`);
    } finally {
      await old.destroy();
    }
    // Up to the merge: the later migrations' indexes are theirs to test.
    const throughMerge = MIGRATIONS.slice(0, MIGRATIONS.indexOf(AuditUserIndexMerged1766700000000) + 1);
    const source = await new DataSource({ ...dataSourceOptions(db), migrations: throughMerge }).initialize();
    const writing = new Client({ connectionString: db });
    const reading = new Client({ connectionString: db });
    const writer = new Client({ connectionString: db });
    await Promise.all([writing.connect(), reading.connect(), writer.connect()]);
    const until = async (what: string, sql: string): Promise<void> => {
      for (let waited = 0; !(await writer.query(sql)).rowCount; waited += 50) {
        assert.ok(waited < 10_000, what);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    try {
      // A long read of this month's events (an export, a verification) in progress all along.
      await reading.query('BEGIN');
      const [{ current }] = (await reading.query(`SELECT to_char(now() AT TIME ZONE 'UTC', '"audit_events_y"YYYY"m"MM') AS current`)).rows;
      assert.notEqual(current, last, 'the read is on a month whose index the migration builds, not drops');
      await reading.query(`SELECT count(*) FROM "${current}"`);
      // A write in progress when the migration starts, on a month it has yet to index: the build waits for it.
      await writing.query('BEGIN');
      const [{ month }] = (
        await writing.query(`INSERT INTO audit_events (type, created_at) VALUES ('LOGIN', now()) RETURNING tableoid::regclass::text AS month`)
      ).rows;
      assert.notEqual(month, last, 'the write goes to a month the migration still has to index');
      let settled = false;
      const migrating = runMigrationsLocked(source).finally(() => (settled = true));
      await until(
        'the build waits for the write in progress',
        `SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'CREATE INDEX %' AND wait_event_type = 'Lock'`,
      );
      // Meanwhile another event goes into that month at once (a plain CREATE INDEX would queue
      // a lock that held it back until the first write ended).
      await writer.query(`SET lock_timeout = '2s'`);
      const { rows: written } = await writer.query(
        `INSERT INTO audit_events (type, created_at) VALUES ('LOGIN', now()) RETURNING tableoid::regclass::text AS month`,
      );
      assert.equal(written[0].month, month);
      await writing.query('COMMIT');
      // Every month indexed: the old indexes' drop needs the table, which the read holds.
      await until('the months are indexed', `SELECT 1 FROM pg_index WHERE indexrelid = '"IDX_audit_events_user_time_type"'::regclass AND indisvalid`);
      await until(
        'the drop waits for the read',
        `SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'DROP INDEX %' AND wait_event_type = 'Lock'`,
      );
      // Meanwhile events are written at once (a drop waiting in the lock queue would hold them back).
      for (let i = 0; i < 3; i++) {
        await writer.query(`INSERT INTO audit_events (type, created_at) VALUES ('LOGIN', now())`);
        await new Promise((resolve) => setTimeout(resolve, 300));
      }
      assert.equal(settled, false, 'the drop waits for the read to end');
      await reading.query('COMMIT');
      await migrating;

      const { rows: indexes } = await writer.query<{ name: string; valid: boolean }>(
        `SELECT c.relname AS name, x.indisvalid AS valid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
          WHERE x.indrelid = 'audit_events'::regclass AND c.relname LIKE 'IDX_audit_events_user%'`,
      );
      assert.deepEqual(indexes, [{ name: 'IDX_audit_events_user_time_type', valid: true }]);
      const { rows: attached } = await writer.query<{ month: string; valid: boolean; def: string }>(
        `SELECT t.relname AS month, x.indisvalid AS valid, pg_get_indexdef(x.indexrelid) AS def
           FROM pg_inherits a JOIN pg_index x ON x.indexrelid = a.inhrelid JOIN pg_class t ON t.oid = x.indrelid
          WHERE a.inhparent = '"IDX_audit_events_user_time_type"'::regclass ORDER BY 1`,
      );
      assert.deepEqual(
        attached.map((r) => r.month),
        await months(source),
      );
      for (const r of attached) {
        assert.equal(r.valid, true, r.month);
        assert.match(r.def, /\(user_id, created_at, seq, type\)$/, r.def);
      }
      // Every month keeps exactly the one user index (the failed build's was replaced, not kept beside it).
      const { rows: perMonth } = await writer.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indrelid
          WHERE i.inhparent = 'audit_events'::regclass AND pg_get_indexdef(x.indexrelid) LIKE '%(user_id,%' GROUP BY x.indrelid`,
      );
      assert.ok(perMonth.length > 0 && perMonth.every((r) => r.n === 1), JSON.stringify(perMonth));
      const [{ count }] = await source.query(`SELECT count(*)::int AS count FROM audit_events`);
      assert.equal(count, 5);
    } finally {
      await writing.end().catch(() => undefined);
      await reading.end().catch(() => undefined);
      await writer.end();
      await source.destroy();
    }
  });

  it("index a user's events by type, every month, for every type but refreshes and the cleanup's expiries", async () => {
    const db = await emptyDatabase();
    const source = await new DataSource(dataSourceOptions(db)).initialize();
    try {
      await runMigrationsLocked(source);
      const [{ valid }] = await source.query(
        `SELECT x.indisvalid AS valid FROM pg_index x WHERE x.indexrelid = '"IDX_audit_events_user_type_partial"'::regclass`,
      );
      assert.equal(valid, true);
      const attached: Array<{ month: string; valid: boolean; def: string }> = await source.query(
        `SELECT t.relname AS month, x.indisvalid AS valid, pg_get_indexdef(x.indexrelid) AS def
           FROM pg_inherits a JOIN pg_index x ON x.indexrelid = a.inhrelid JOIN pg_class t ON t.oid = x.indrelid
          WHERE a.inhparent = '"IDX_audit_events_user_type_partial"'::regclass ORDER BY 1`,
      );
      const months: Array<{ relname: string }> = await source.query(
        `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1`,
      );
      assert.deepEqual(
        attached.map((r) => r.month),
        months.map((m) => m.relname),
      );
      for (const r of attached) {
        assert.equal(r.valid, true, r.month);
        assert.match(r.def, /\(user_id, type, created_at, seq\) WHERE .*TOKEN_REFRESH.*SESSION_EXPIRED/, r.def);
      }
      // A month made later gets it too (the partitions job's months).
      await source.query(`CREATE TABLE audit_events_y2099m01 PARTITION OF audit_events FOR VALUES FROM ('2099-01-01') TO ('2099-02-01')`);
      const [{ n }] = await source.query(
        `SELECT count(*)::int AS n FROM pg_inherits a JOIN pg_index x ON x.indexrelid = a.inhrelid
          WHERE a.inhparent = '"IDX_audit_events_user_type_partial"'::regclass AND x.indrelid = 'audit_events_y2099m01'::regclass`,
      );
      assert.equal(n, 1);
      // The later migrations first, then this one.
      const undo = MIGRATIONS.length - MIGRATIONS.indexOf(AuditUserTypeIndex1766800000000);
      for (let i = 0; i < undo; i++) await source.undoLastMigration();
      assert.equal((await source.query(`SELECT to_regclass('"IDX_audit_events_user_type_partial"') AS r`))[0].r, null);
    } finally {
      await source.destroy();
    }
  });

  it("delete the counters' rows kept under the old keys (plain addresses, unkeyed digests), keeping the total registrations' row", async () => {
    const db = await emptyDatabase();
    const source = await new DataSource(dataSourceOptions(db)).initialize();
    try {
      await runMigrationsLocked(source);
      // The later migrations first, then this one.
      for (let i = MIGRATIONS.indexOf(CounterKeysKeyed1767100000000); i < MIGRATIONS.length; i++) await source.undoLastMigration();
      const digest = 'a'.repeat(64);
      await source.query(`INSERT INTO login_throttle (key, failures, last_failure_at) VALUES ($1, 3, now())`, [digest]);
      await source.query(`INSERT INTO login_known_clients (key, last_success_at) VALUES ($1, now())`, [digest]);
      await source.query(
        `INSERT INTO rate_limits (key, hits, window_ends_at) VALUES ('default:198.51.100.7', 1, now() + interval '1 minute'),
           ('register:198.51.100.7', 1, now() + interval '1 hour'), ('register-total', 4, now() + interval '1 hour'), ($1, 2, now() + interval '1 minute')`,
        [digest],
      );
      await source.runMigrations({ transaction: 'each' });
      assert.deepEqual(await source.query(`SELECT key FROM login_throttle UNION ALL SELECT key FROM login_known_clients`), []);
      assert.deepEqual(
        (await source.query(`SELECT key FROM rate_limits ORDER BY key`)).map((r: { key: string }) => r.key),
        [digest, 'register-total'],
      );
    } finally {
      await source.destroy();
    }
  });

  it('forget the known clients that name no account (no password change could take them back), then name each new one', async () => {
    const db = await emptyDatabase();
    const source = await new DataSource(dataSourceOptions(db)).initialize();
    try {
      await runMigrationsLocked(source);
      for (let i = MIGRATIONS.indexOf(LoginKnownClientsAccount1767400000000); i < MIGRATIONS.length; i++) await source.undoLastMigration();
      await source.query(`INSERT INTO login_known_clients (key, last_success_at) VALUES ($1, now())`, ['b'.repeat(64)]);
      await source.runMigrations({ transaction: 'each' });
      assert.deepEqual(await source.query(`SELECT key FROM login_known_clients`), []);
      await source.query(`INSERT INTO login_known_clients (key, last_success_at, account) VALUES ($1, now(), $2)`, ['c'.repeat(64), 'd'.repeat(64)]);
      assert.deepEqual(await source.query(`SELECT account FROM login_known_clients`), [{ account: 'd'.repeat(64) }]);
    } finally {
      await source.destroy();
    }
  });
});
