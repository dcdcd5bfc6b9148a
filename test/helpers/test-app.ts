import { LoggerService } from '@nestjs/common';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { SchedulerRegistry } from '@nestjs/schedule';
import { Client } from 'pg';
import { Test } from '@nestjs/testing';
import request from 'supertest';
import type TestAgent from 'supertest/lib/agent';
import { DataSource } from 'typeorm';
import { AppModule } from '../../src/app.module';
import { configureApp, createFastifyAdapter, NEST_APP_OPTIONS } from '../../src/app.setup';
import { AppConfig, loadConfig } from '../../src/config/config';
import { SESSIONARY_DATA_SOURCE_TOKEN } from '../../src/database/data-source-name';
import { SESSIONARY_CRON_JOBS } from '../../src/sessionary/scheduled-jobs';

export interface TestApp {
  app: NestFastifyApplication;
  http: TestAgent;
  db: DataSource;
  config: AppConfig;
  close(): Promise<void>;
}

export const TEST_AUDIT_HMAC_KEY = 'test-audit-hmac-key-0123456789-abcdefghijklmnop';
export const TEST_PASSWORD_PEPPER = 'test-password-pepper-0123456789-abcdefghijklmno';
/** Every app and CLI of a file shares its database's signing keys, so they share the key that seals them. */
export const TEST_KEY_ENCRYPTION_KEY = 'test-key-encryption-key-0123456789-abcdefghijk';

let fileDatabaseUrl: Promise<string> | undefined;

/**
 * Each spec file runs in its own process and gets its own database, made next to the run's
 * database (DATABASE_URL, set by test/run-tests.ts, which drops them all at the end): files
 * run in parallel, and a cleanup test must not end another file's sessions. It is a copy of
 * the run's migrated template (see migratedDatabaseAt), so its apps find nothing to migrate.
 */
export function databaseForThisFile(): Promise<string> {
  fileDatabaseUrl ??= (async () => {
    const base = process.env.DATABASE_URL;
    if (!base) throw new Error('DATABASE_URL is not set: run the tests with `npm test`');
    const url = new URL(base);
    url.pathname = `${url.pathname}_p${process.pid}`;
    return migratedDatabaseAt(url);
  })();
  return fileDatabaseUrl;
}

let extraDatabases = 0;

/** The url of a further database of this file's own, named after the file's (so the run drops it too). */
async function extraDatabaseUrl(): Promise<URL> {
  const url = new URL(await databaseForThisFile());
  url.pathname = `${url.pathname}_${++extraDatabases}`;
  return url;
}

/** A further database of this file's own, migrated: for tests that tamper with a log and must not disturb the next test. */
export async function freshDatabase(): Promise<string> {
  return migratedDatabaseAt(await extraDatabaseUrl());
}

/**
 * A copy of the database `url` names, as a backup of it would restore (its sequences where they
 * stood): nobody may be connected to it (PostgreSQL copies only such a database). Named after it,
 * so the run drops it too.
 */
export async function copyOfDatabase(url: string): Promise<string> {
  const copy = new URL(url);
  copy.pathname = `${copy.pathname}_copy${++extraDatabases}`;
  return createDatabaseAt(copy, new URL(url).pathname.slice(1));
}

/**
 * A further database of this file's own with no schema at all: for tests of the migrations
 * themselves (applied from nothing, several instances booting together, a version before
 * some migration), which a migrated copy would pass without running them.
 */
export async function emptyDatabase({ ctype }: { ctype?: string } = {}): Promise<string> {
  return createDatabaseAt(await extraDatabaseUrl(), undefined, ctype);
}

/**
 * Creates the database `url` names with every migration applied: a copy of the run's template
 * (TEST_TEMPLATE_DATABASE, made by test/run-tests.ts), which costs about a fifth of applying
 * them. Without a template (a script outside `npm test`), an empty one that the first app migrates.
 */
function migratedDatabaseAt(url: URL): Promise<string> {
  return createDatabaseAt(url, process.env.TEST_TEMPLATE_DATABASE);
}

/**
 * Creates the database `url` names (a copy of `template` when given; with `ctype`, an empty one
 * of that LC_CTYPE and LC_COLLATE), through a connection to DATABASE_URL's; answers the url.
 */
async function createDatabaseAt(url: URL, template?: string, ctype?: string): Promise<string> {
  const client = new Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
  try {
    // libc's locale named, even where the cluster's default provider is ICU (PostgreSQL 15 and later), whose lower() folds whatever LC_CTYPE says.
    const icuPossible = ctype && Number((await client.query(`SELECT current_setting('server_version_num') AS v`)).rows[0].v) >= 150000;
    const locale = ctype
      ? ` TEMPLATE template0 ENCODING 'UTF8' LC_CTYPE '${ctype}' LC_COLLATE '${ctype}'${icuPossible ? ' LOCALE_PROVIDER libc' : ''}`
      : '';
    await client.query(`CREATE DATABASE "${url.pathname.slice(1)}"${template ? ` TEMPLATE "${template}"` : locale}`);
  } finally {
    await client.end();
  }
  return url.toString();
}

/** For scripts outside `npm test` (benchmarks): drops this process's database. */
export async function dropDatabaseForThisFile(): Promise<void> {
  if (!fileDatabaseUrl) return;
  const name = new URL(await fileDatabaseUrl).pathname.slice(1);
  const client = new Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

/**
 * The real app (same module, same configureApp as main.ts) on this file's database, with the
 * real migrations. `overrides` sets variables for this app only, e.g. short TTLs; without a
 * `logger` the app logs nothing.
 */
export async function createTestApp(overrides: Record<string, string> = {}, options: { logger?: LoggerService } = {}): Promise<TestApp> {
  const config = loadConfig({
    ...process.env,
    // A spec with its own server (outage.e2e-spec.ts) names it; the others share this file's database.
    DATABASE_URL: overrides.DATABASE_URL ?? (await databaseForThisFile()),
    NODE_ENV: 'test',
    BCRYPT_COST: '4', // the cost factor changes nothing the tests assert, only their speed
    SESSION_CLEANUP_CRON: '0 0 1 1 *', // tests call the cleanup themselves
    LOG_LEVEL: 'fatal',
    // Every request of a spec file comes from 127.0.0.1: the per-IP limits are tested on
    // their own (throttling.e2e-spec.ts) and kept out of the other files' way.
    RATE_LIMIT_PER_MINUTE: '0',
    LOGIN_MAX_FAILURES_PER_IP: '1000000',
    REGISTER_MAX_PER_IP: '0',
    // One audit key for every app of a file (they share its database, so its chains), and no
    // checkpoint in the background: tests that want one call AuditChainService.checkpoint().
    AUDIT_HMAC_KEY: TEST_AUDIT_HMAC_KEY,
    // One pepper too: it keys the rate-limit and login counters' rows, which a file's apps share.
    PASSWORD_PEPPER: TEST_PASSWORD_PEPPER,
    KEY_ENCRYPTION_KEY: TEST_KEY_ENCRYPTION_KEY,
    AUDIT_CHECKPOINT_EVERY: '1000000000',
    AUDIT_CHECKPOINT_INTERVAL: '86400',
    // Nor a summary of refused requests (REQUESTS_REFUSED) at a moment no test chose: those that
    // want one call RefusedRequestsTally.flush() (it also runs when an app closes).
    AUDIT_REFUSAL_SUMMARY_INTERVAL: '86400',
    ...overrides,
  });
  const moduleRef = await Test.createTestingModule({ imports: [AppModule.forRoot(config)] }).compile();
  const logger = options.logger ?? false;
  const app = await configureApp(
    moduleRef.createNestApplication<NestFastifyApplication>(createFastifyAdapter(config), { ...NEST_APP_OPTIONS, logger }),
    config,
    logger,
  );
  try {
    await app.init();
  } catch (error) {
    // A boot the test expects to fail must not leave the pool open behind it.
    await app.close().catch(() => undefined);
    throw error;
  }
  // The jobs on fixed wall-clock schedules are stopped, as the cleanup is scheduled for once a
  // year above: tests run them themselves. Left running, the hourly partitions job took its
  // lock at 14:00:00 in a CI run while a retention test ran maintain(), which then skipped.
  const registry = app.get(SchedulerRegistry);
  for (const name of Object.values(SESSIONARY_CRON_JOBS)) if (name !== SESSIONARY_CRON_JOBS.sessionsCleanup) await registry.getCronJob(name).stop();
  await app.getHttpAdapter().getInstance().ready();
  return {
    app,
    http: request(app.getHttpServer()),
    db: app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN),
    config,
    close: () => app.close(),
  };
}
