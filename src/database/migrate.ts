import { Logger, type LoggerService } from '@nestjs/common';
import { setTimeout as sleep } from 'node:timers/promises';
import { DataSource, MigrationExecutor, QueryRunner } from 'typeorm';

// Any fixed 64-bit number works; this one spells "sessmigr" in ASCII.
export const MIGRATION_LOCK_KEY = '8315173848271906162';

/**
 * Applies pending migrations while holding a PostgreSQL advisory lock, so that instances
 * booting together run them once: the others wait, then find nothing pending. First refuses a
 * schema that is not Sessionary's to migrate (assertSchemaIsSessionarys).
 *
 * On one connection whose statement_timeout is off meanwhile: the pool's timeout is meant for
 * requests, while a migration over a large table (AuditPartitions copies every audit event)
 * takes as long as it takes, and so does waiting for another instance's migrations.
 */
export async function runMigrationsLocked(
  dataSource: DataSource,
  { logger = new Logger('Migrations'), reportWaitAfterMs = WAIT_REPORT_FIRST_MS }: { logger?: LoggerService; reportWaitAfterMs?: number } = {},
): Promise<void> {
  await underMigrationLock(dataSource, logger, reportWaitAfterMs, async (runner) => {
    await assertSchemaIsSessionarys(runner, dataSource);
    const executor = new MigrationExecutor(dataSource, runner);
    executor.transaction = 'each';
    const applied = await executor.executePendingMigrations();
    if (applied.length) logger.log(`Applied ${applied.length} migration(s): ${applied.map((m) => m.name).join(', ')}`);
    const unknown = await migrationsUnknownHere(runner, dataSource);
    if (unknown.length) {
      // TypeORM ignores them: an older version (a rollback of the code) runs on a newer schema without a word.
      logger.warn(
        `The database holds ${unknown.length} migration(s) this version does not know (${unknown.join(', ')}): a newer version migrated it. ` +
          `This version runs on that schema; roll the code forward, or see the README's Migrations section before reverting any`,
      );
    }
  });
}

/**
 * `work` on one connection that holds the migration lock, with statement_timeout off meanwhile
 * (see runMigrationsLocked); the lock is released and the connection goes back to the pool
 * with the pool's timeout, whatever `work` does.
 */
async function underMigrationLock<T>(
  dataSource: DataSource,
  logger: LoggerService,
  reportWaitAfterMs: number,
  work: (runner: QueryRunner) => Promise<T>,
): Promise<T> {
  const runner = dataSource.createQueryRunner();
  await runner.connect();
  try {
    await runner.query('SET statement_timeout = 0');
    await lockPolling(runner, logger, reportWaitAfterMs);
    try {
      return await work(runner);
    } finally {
      await runner.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
    }
  } finally {
    await runner.query('RESET statement_timeout').catch(() => undefined);
    await runner.release();
  }
}

/**
 * What a migration's `down` destroys that no backup of the code brings back (README, Rolling
 * back), by class name: said before it is reverted.
 */
export const DESTRUCTIVE_DOWNS: Record<string, string> = {
  InitialSchema: 'drops every user, session and audit event',
  AuditChain: "drops every event's hash chain and the checkpoints",
  AuditBaseSets: 'drops the base sets: once retention has dropped a month, the log can no longer be verified',
  SigningKeys: 'drops the signing-key ring: every access token is refused',
  AuditShipProgress: 'forgets what the HTTP destination accepted: it receives the whole log again',
};

/** A revert asked for without naming the migration it would revert (`--confirm <name>`). */
export class RevertNotConfirmedError extends Error {}

/**
 * `npm run migration:revert`: reverts the last migration applied, under the migration lock (an
 * instance booting meanwhile with MIGRATIONS_RUN=true waits, rather than applying it again
 * half way through), and only when `confirm` names it, as it is recorded: a revert undoes data
 * as well as schema, and the command says first what it would revert and what that destroys.
 * Answers the name reverted, or undefined when no migration has run.
 */
export async function revertLastMigrationLocked(
  dataSource: DataSource,
  { confirm, logger = new Logger('Migrations') }: { confirm: string | undefined; logger?: LoggerService },
): Promise<string | undefined> {
  return underMigrationLock(dataSource, logger, WAIT_REPORT_FIRST_MS, async (runner) => {
    const executor = new MigrationExecutor(dataSource, runner);
    executor.transaction = 'each';
    // TypeORM reverts the one it recorded last (by id): that one is named.
    const [last] = await executor.getExecutedMigrations();
    if (!last) {
      logger.log('No migration has run: nothing to revert');
      return undefined;
    }
    // One recorded by a newer version: this version has no `down` for it (TypeORM would refuse it after the confirmation).
    if (!dataSource.migrations.some((m) => (m.name ?? m.constructor.name) === last.name)) {
      throw new RevertNotConfirmedError(
        `Nothing reverted. The last migration applied, ${last.name}, is not one of this version's: a newer version applied it, and only that version can revert it`,
      );
    }
    if (confirm !== last.name) {
      const destroys = DESTRUCTIVE_DOWNS[last.name.replace(/\d+$/, '')];
      throw new RevertNotConfirmedError(
        `Nothing reverted. The last migration applied is ${last.name}${destroys ? `, whose down ${destroys}` : ''}. ` +
          `Do not revert a migration that has run in production: roll the code back instead (README, Rolling back). ` +
          `To revert it, run again with --confirm ${last.name} (npm run migration:revert -- --confirm ${last.name})`,
      );
    }
    await executor.undoLastMigration();
    logger.log(`Reverted ${last.name}`);
    return last.name;
  });
}

/** Names in the migrations table that none of this version's migrations has. */
async function migrationsUnknownHere(runner: QueryRunner, dataSource: DataSource): Promise<string[]> {
  const known = new Set(dataSource.migrations.map((m) => m.name ?? m.constructor.name));
  const table = dataSource.options.migrationsTableName ?? 'migrations';
  const rows: Array<{ name: string }> = await runner.query(`SELECT name FROM "${table}" ORDER BY "timestamp"`);
  return rows.map((r) => r.name).filter((name) => !known.has(name));
}

/**
 * The tables Sessionary's migrations create, but the migrations table (checked by its rows):
 * any of them in a schema Sessionary has never migrated belongs to another application. A test
 * compares this list with a migrated schema's tables.
 */
export const SESSIONARY_TABLES = [
  'access_token_lifetimes',
  'audit_base_sets',
  'audit_chain_bases',
  'audit_chain_heads',
  'audit_chain_seal',
  'audit_checkpoint_buckets',
  'audit_checkpoint_heads',
  'audit_checkpoints',
  'audit_events',
  'audit_ship_progress',
  'login_known_clients',
  'login_throttle',
  'rate_limits',
  'rotated_refresh_tokens',
  'scheduled_job_runs',
  'sessions',
  'signing_key_ring_made',
  'signing_keys',
  'users',
] as const;

/**
 * Every function Sessionary's migrations create (no arguments: the triggers' functions), in
 * name order: in a schema Sessionary never migrated, a host's function of one of these names is
 * refused before any migration runs (plain CREATE FUNCTION would stop at "already exists";
 * AuditTruncateRefused's CREATE OR REPLACE, which lets a rerun after a crash complete it, would
 * replace it). migrations.e2e-spec.ts checks the list against a migrated schema.
 */
export const SESSIONARY_FUNCTIONS = [
  'audit_chain_seal_closed',
  'audit_checkpoints_append_only',
  'audit_events_append_only',
  'audit_refuse_truncate',
  'sessionary_notify_role_change',
  'sessionary_notify_session_change',
  'sessionary_notify_sessions_truncated',
  'sessionary_notify_signing_keys',
] as const;

/**
 * Refuses, with what to do, a schema that another application already uses and Sessionary has
 * never migrated: a migration would stop at "relation "users" already exists" (or meet a
 * host's table of the same name in a later migration, halfway through the list),
 * and another application's migrations table would take Sessionary's history in with its own
 * (whose revert then finds a migration it does not know). A schema Sessionary has migrated
 * before, or an empty one, passes; so does a migrations table left empty by a first migration
 * that failed.
 */
async function assertSchemaIsSessionarys(runner: QueryRunner, dataSource: DataSource): Promise<void> {
  const [{ schema }]: Array<{ schema: string | null }> = await runner.query('SELECT current_schema() AS schema');
  if (schema === null) {
    throw new Error(
      "The database connection's search_path names no existing schema: create the schema Sessionary is to use (CREATE SCHEMA ...) before it starts",
    );
  }
  const table = dataSource.options.migrationsTableName ?? 'migrations';
  // In this schema: with a search_path of `sessionary, public` (a host's tables visible beside
  // Sessionary's), an unqualified name found the host's public.migrations, and the first boot
  // was refused as though this schema were another application's (until 0.24.1).
  const [{ present }]: Array<{ present: boolean }> = await runner.query(
    'SELECT to_regclass(format($$%I.%I$$, current_schema(), $1::text)) IS NOT NULL AS present',
    [table],
  );
  const ours = dataSource.migrations.map((m) => m.name ?? m.constructor.name);
  if (present) {
    const [{ recorded, others }]: Array<{ recorded: number; others: number }> = await runner.query(
      `SELECT count(*) FILTER (WHERE name = ANY($1))::int AS recorded, count(*) FILTER (WHERE name <> ALL($1))::int AS others FROM "${table}"`,
      [ours],
    );
    if (recorded > 0) return;
    if (others > 0) throw notOurs(schema, [`a "${table}" table of another application's migrations`]);
  }
  // Views and sequences too: a name taken by any relation stops the CREATE TABLE.
  const found: Array<{ relname: string }> = await runner.query(
    `SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relname = ANY($1) ORDER BY relname`,
    [SESSIONARY_TABLES],
  );
  const functions: Array<{ proname: string }> = await runner.query(
    `SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = current_schema()::regnamespace AND proname = ANY($1) ORDER BY proname`,
    [SESSIONARY_FUNCTIONS],
  );
  if (found.length || functions.length)
    throw notOurs(schema, [...found.map((r) => `a table "${r.relname}"`), ...functions.map((f) => `a function "${f.proname}"`)]);
}

function notOurs(schema: string, what: string[]): Error {
  return new Error(
    `Schema "${schema}" already holds ${what.join(' and ')}, and Sessionary has never migrated it: give Sessionary a database ` +
      `of its own, or a schema (CREATE SCHEMA sessionary, then ?options=-c%20search_path%3Dsessionary in the database URL)`,
  );
}

/** How often an instance waiting for another's migrations asks for the lock again. */
const LOCK_POLL_MS = 250;
/** After how long of waiting an instance says whom it waits for, and how often again. */
const WAIT_REPORT_FIRST_MS = 5_000;
const WAIT_REPORT_EVERY_MS = 30_000;

/**
 * Takes the migration lock, asking again until it is free rather than waiting inside one
 * `pg_advisory_lock` call: a statement that waits holds its snapshot all along, and a
 * migration that builds an index CONCURRENTLY waits for every older snapshot to go, so the
 * instance migrating would wait for the one waiting for it (a deadlock, which PostgreSQL
 * breaks by failing one of them).
 */
async function lockPolling(runner: QueryRunner, logger: LoggerService, reportWaitAfterMs: number): Promise<void> {
  const started = Date.now();
  let nextReport = started + reportWaitAfterMs;
  for (;;) {
    const [{ locked }]: Array<{ locked: boolean }> = await runner.query('SELECT pg_try_advisory_lock($1) AS locked', [MIGRATION_LOCK_KEY]);
    if (locked) return;
    // The boot shows nothing else meanwhile (the server does not listen yet): say whom it waits for.
    if (Date.now() >= nextReport) {
      logger.warn(`${await describeLockHolder(runner)} (waiting ${Math.round((Date.now() - started) / 1000)} s)`);
      nextReport = Date.now() + WAIT_REPORT_EVERY_MS;
    }
    await sleep(LOCK_POLL_MS);
  }
}

/** Who holds the migration lock, from pg_locks and pg_stat_activity: pid, application, client, since when, what it runs. */
async function describeLockHolder(runner: QueryRunner): Promise<string> {
  // An advisory lock on a bigint key is split into classid (high 32 bits) and objid (low 32 bits), objsubid 1.
  const rows: Array<{
    pid: number;
    application: string | null;
    client: string | null;
    since: Date | null;
    state: string | null;
    query: string | null;
  }> = await runner.query(
    `SELECT a.pid, a.application_name AS application, a.client_addr::text AS client, a.xact_start AS since, a.state,
              left(a.query, 120) AS query
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          -- Advisory locks are per database; pg_locks lists the whole server's.
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = (($1::bigint >> 32) & 4294967295)::oid AND l.objid = ($1::bigint & 4294967295)::oid
        ORDER BY a.xact_start NULLS LAST
        LIMIT 1`,
    [MIGRATION_LOCK_KEY],
  );
  if (!rows.length) return 'Waiting for the migration lock (its holder is not visible to this role)';
  const holder = rows[0];
  return (
    `Waiting for the migration lock, held by pid ${holder.pid} (${holder.application || 'no application name'}` +
    `${holder.client ? ` from ${holder.client}` : ''}${holder.since ? `, in a transaction since ${holder.since.toISOString()}` : ''}` +
    `, ${holder.state ?? 'state unknown'}: ${holder.query ?? ''}): another instance applying migrations, or a session that took the lock`
  );
}
