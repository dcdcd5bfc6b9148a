/**
 * The audit log and the session cleanup at scale, beside the same measures on an almost empty
 * database (issue 8, item 8):
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test npm run bench -- audit [--small]
 * Sizes (environment): BENCH_AUDIT_USERS / BENCH_AUDIT_SESSIONS / BENCH_AUDIT_EVENTS (default
 * 1M / 10M / 50M; `--small` or BENCH_AUDIT_SIZE=small: 10k / 100k / 500k), BENCH_AUDIT_RUNS
 * (100 timed runs per page query), BENCH_AUDIT_CLEANUP (sessions to end and to delete: 100k,
 * 20k with --small), BENCH_AUDIT_VERIFY=0 skips verification, BENCH_AUDIT_RESULTS (the JSON
 * file's path).
 *
 * Each database is made on DATABASE_URL's server for the run and dropped afterwards (also on
 * failure and Ctrl-C), unless BENCH_AUDIT_KEEP=1 keeps the large one; BENCH_AUDIT_REUSE and
 * BENCH_AUDIT_REUSE_SECRETS measure a kept one again (see sizes.ts). The service runs in this process (an application context, production
 * settings, secrets generated for the run); pages are timed at AuditService.list(), so the
 * figures are the query's and its mapping's, without HTTP.
 */
import { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { randomBytes } from 'node:crypto';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { AppModule } from '../src/app.module';
import { AuditChainService } from '../src/audit/audit-chain.service';
import { loadConfig } from '../src/config/config';
import { Env } from '../src/config/env.schema';
import { dataSourceOptions } from '../src/database/data-source.options';
import { runMigrationsLocked } from '../src/database/migrate';
import {
  measureCheckpoint,
  measureCleanup,
  measureMonthOrder,
  measurePages,
  measurePartitionDrop,
  measureVerification,
  pageQueries,
  randomBenchUser,
} from './audit/measure';
import { printReport, ScenarioResult } from './audit/report';
import { seed, type SeedTimes } from './audit/seed';
import { AuditBenchConfig, EMPTY_SIZE, readConfig, RunSecrets, Size } from './audit/sizes';
import { dataFilesystem } from './audit/data-filesystem';
import { createDatabase, dropDatabase, withDatabase } from './http/service';
import { writeJson } from './http/report';
import { elapsedSeconds, gitCommit, progress, REPO, runBench, undo } from './lifecycle';

/** Chains changed before the measured checkpoint: as many as AUDIT_CHECKPOINT_EVERY's default lets pass. */
const CHECKPOINT_CHANGED = 1000;

/**
 * What a reused database's seed left that the measures need: its events' time span and its
 * chains (its seed times are not known: zero).
 */
async function seededBefore(client: Client): Promise<SeedTimes> {
  const {
    rows: [r],
  } = await client.query(
    `SELECT (SELECT min(created_at) FROM audit_events) AS "from", (SELECT max(created_at) FROM audit_events) AS "to",
            (SELECT count(*)::int FROM audit_chain_heads) AS chains`,
  );
  const times = { usersSeconds: 0, sessionsSeconds: 0, eventsSeconds: 0, indexSeconds: 0, analyzeSeconds: 0, totalSeconds: 0 };
  return { ...times, eventsFrom: r.from.toISOString(), eventsTo: r.to.toISOString(), chains: r.chains };
}

/** The service's configuration: production defaults, the run's secrets, no background jobs in the way. */
function appConfig(databaseUrl: string, secrets: RunSecrets) {
  const env: Record<string, string | undefined> = { ...process.env };
  for (const key of Object.keys(new Env())) delete env[key];
  for (const key of ['JWT_SECRET', 'PASSWORD_PEPPER', 'AUDIT_CHECKPOINT_FILE', 'AUDIT_RETENTION_DAYS', 'AUDIT_ARCHIVE_DIR']) delete env[key];
  return loadConfig({
    ...env,
    NODE_ENV: 'production',
    DATABASE_URL: databaseUrl,
    JWT_SECRET: randomBytes(48).toString('base64'),
    PASSWORD_PEPPER: randomBytes(48).toString('base64'),
    AUDIT_HMAC_KEY: secrets.AUDIT_HMAC_KEY,
    KEY_ENCRYPTION_KEY: secrets.KEY_ENCRYPTION_KEY,
    LOG_LEVEL: 'warn',
    // The bench runs the cleanup itself; checkpoints only when the partition drop writes its own.
    SESSION_CLEANUP_CRON: '0 0 1 1 *',
    AUDIT_CHECKPOINT_EVERY: '1000000000',
    AUDIT_CHECKPOINT_INTERVAL: '86400',
    METRICS_ENABLED: 'false',
    // The bench rewrites the closed months itself, timed, before the pages (measureMonthOrder).
    AUDIT_ORDER_CLOSED_MONTHS: 'false',
  });
}

async function scenario(label: string, serverUrl: string, size: Size, config: AuditBenchConfig): Promise<ScenarioResult> {
  const reuse = label !== 'empty' ? config.reuse : undefined;
  const database = reuse ? new URL(reuse.url).pathname.slice(1) : await createDatabase(serverUrl);
  const dropThis = () => dropDatabase(serverUrl, database);
  // A reused database is the operator's: never dropped. One to be kept is kept on failure too
  // (a 50M seed takes most of an hour), and how to reuse it is printed once it is seeded.
  const keepLarge = config.keep && label !== 'empty';
  if (!reuse && !keepLarge) undo.push(dropThis);
  const url = reuse?.url ?? withDatabase(serverUrl, database);
  const secrets = reuse?.secrets ?? {
    AUDIT_HMAC_KEY: randomBytes(48).toString('base64'),
    KEY_ENCRYPTION_KEY: randomBytes(48).toString('base64'),
  };
  const seeder = new Client({ connectionString: url });
  let seeded: SeedTimes;
  // The schema: on a new database before the seed (the service starts after it, as it would on
  // a database with this history: its boot records the new signing-key ring after the seeded
  // events, in time order); on a reused one, whatever this build adds to the build that seeded it.
  const migrator = await new DataSource(dataSourceOptions(url)).initialize();
  try {
    progress(`${label}: database ${database}, migrations`);
    await runMigrationsLocked(migrator);
  } finally {
    await migrator.destroy();
  }
  await seeder.connect();
  undo.push(() => seeder.end());
  if (reuse) {
    seeded = await seededBefore(seeder);
    progress(`${label}: reusing ${database} (${seeded.chains.toLocaleString('en-US')} chains); measuring pages`);
  } else {
    seeded = await seed(seeder, size, secrets.AUDIT_HMAC_KEY, config.months, (line) => progress(`${label}: ${line}`));
  }
  // Sessions that came due since they were seeded (a 50M seed takes over half an hour; a kept
  // database is reused later) would be ended by the cleanup's measure too: pushed a day out.
  const pushed = await seeder.query(
    `UPDATE sessions SET idle_expires_at = now() + interval '1 day', absolute_expires_at = GREATEST(absolute_expires_at, now() + interval '1 day')
      WHERE ended_at IS NULL AND idle_expires_at <= now() + interval '1 hour'`,
  );
  // Their old index entries, dead now, would slow the cleanup's first batches until vacuumed.
  if (pushed.rowCount) await seeder.query('VACUUM (ANALYZE) sessions');
  if (keepLarge && !reuse) {
    progress(
      `${label}: kept (also on failure); measure it again with BENCH_AUDIT_REUSE=${url} BENCH_AUDIT_REUSE_SECRETS=${secrets.AUDIT_HMAC_KEY},${secrets.KEY_ENCRYPTION_KEY}`,
    );
  }
  const [{ bytes }] = (await seeder.query(`SELECT pg_database_size(current_database())::float8 AS bytes`)).rows;
  // What the pages and the cleanup read from PostgreSQL's own buffers, and how often the cleanup's
  // writes meet a checkpoint (full pages logged again), depend on these: printed beside the figures.
  const [server] = (
    await seeder.query(
      `SELECT current_setting('server_version') AS version, current_setting('shared_buffers') AS shared_buffers,
              current_setting('effective_cache_size') AS effective_cache_size, current_setting('max_wal_size') AS max_wal_size`,
    )
  ).rows as Array<{ version: string; shared_buffers: string; effective_cache_size: string; max_wal_size: string }>;
  const dataFs = await dataFilesystem(seeder);
  if (!reuse) progress(`${label}: seeded in ${seeded.totalSeconds.toFixed(0)} s (${(bytes / 2 ** 30).toFixed(2)} GiB); measuring pages`);
  const app: INestApplicationContext = await NestFactory.createApplicationContext(AppModule.forRoot(appConfig(url, secrets)), {
    logger: ['error', 'warn'],
  });
  const closeApp = () => app.close();
  undo.push(closeApp);
  // A live log has had its periodic checkpoints (every AUDIT_CHECKPOINT_EVERY events or
  // AUDIT_CHECKPOINT_INTERVAL seconds); the seed wrote none. One now, so that the drop's own
  // checkpoint copies only the heads changed since, as it would in production. Timed: it is
  // what the first checkpoint of a large log costs (every head copied and hashed).
  const firstCheckpointStarted = performance.now();
  await app.get(AuditChainService).checkpoint(true);
  const firstCheckpointSeconds = (performance.now() - firstCheckpointStarted) / 1000;

  let order;
  if (config.order) {
    progress(`${label}: rewriting the closed months in chain order`);
    order = await measureMonthOrder(app, (line) => progress(`${label}:   ${line}`));
    if (order.months) {
      // Its write-back (each month's size again, and as much WAL) would otherwise land on the
      // measures that follow: on the first run at 50M the cleanup ended 4.2k sessions/s with 31
      // statements over 100 ms, against 6.8k and 11 on the same database just before.
      const started = performance.now();
      await seeder.query('CHECKPOINT');
      order.checkpointSeconds = (performance.now() - started) / 1000;
    }
  }
  const queries = pageQueries(new Date(seeded.eventsFrom), new Date(seeded.eventsTo), randomBenchUser(size.users));
  const pages = await measurePages(app, queries, config.runs);
  let verification;
  if (config.verify) {
    progress(`${label}: verifying the chains`);
    verification = await measureVerification(app);
  }
  progress(`${label}: a checkpoint of ${seeded.chains.toLocaleString('en-US')} chains while ${CHECKPOINT_CHANGED} of them append`);
  const checkpoint = await measureCheckpoint(app, size.users, CHECKPOINT_CHANGED);
  progress(`${label}: cleanup of ${config.cleanupSessions.toLocaleString('en-US')} overdue sessions`);
  const ended = await measureCleanup(app, seeder, size.users, config.cleanupSessions, 'overdue');
  progress(`${label}: cleanup of ${config.cleanupSessions.toLocaleString('en-US')} sessions past retention`);
  const deleted = await measureCleanup(app, seeder, size.users, config.cleanupSessions, 'pastRetention');
  progress(`${label}: dropping the oldest month`);
  const drop = await measurePartitionDrop(app);

  // Done with this database: free its disk before the next one (unless asked to keep it, to
  // measure more on it, e.g. `npm run cli -- audit-verify` with the printed settings).
  await seeder.end();
  await app.close();
  undo.splice(undo.indexOf(closeApp), 1);
  if (undo.includes(dropThis)) undo.splice(undo.indexOf(dropThis), 1);
  if ((config.keep || reuse) && label !== 'empty') {
    progress(
      `${label}: kept; measure it again with BENCH_AUDIT_REUSE=${url} BENCH_AUDIT_REUSE_SECRETS=${secrets.AUDIT_HMAC_KEY},${secrets.KEY_ENCRYPTION_KEY}`,
    );
  } else {
    await dropThis();
  }
  return {
    label,
    size,
    seeded,
    databaseBytes: bytes,
    server: { ...server, dataFilesystem: dataFs },
    order,
    pages,
    verification,
    firstCheckpointSeconds,
    checkpoint,
    ended,
    deleted,
    drop,
  };
}

async function main(): Promise<void> {
  const config = readConfig(process.argv.slice(2));
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) throw new Error('Set DATABASE_URL to a PostgreSQL server: the bench makes its own databases there and drops them');
  const probe = new Client({ connectionString: serverUrl });
  await probe.connect();
  const {
    rows: [{ server_version }],
  } = await probe.query('SHOW server_version');
  await probe.end();
  progress(`sizes: ${JSON.stringify(config.size)} (${config.sizeName}) beside ${JSON.stringify(EMPTY_SIZE)}; PostgreSQL ${server_version}`);

  const empty = await scenario('empty', serverUrl, EMPTY_SIZE, config);
  const large = await scenario(config.sizeName, serverUrl, config.size, config);
  printReport(empty, large);

  const resultsFile =
    process.env.BENCH_AUDIT_RESULTS ?? join(REPO, 'bench', 'results', `audit-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeJson(resultsFile, {
    startedAt: new Date(Date.now() - process.uptime() * 1000).toISOString(),
    commit: gitCommit(),
    node: process.version,
    cpus: cpus().length,
    postgres: server_version,
    config,
    empty,
    large,
    seconds: elapsedSeconds(),
  });
  console.log(`figures written to ${resultsFile}`);
}

runBench(main, 'dropping the bench databases');
