import { Logger } from '@nestjs/common';
import { setTimeout as sleep } from 'node:timers/promises';
import { DataSource, MigrationExecutor, QueryRunner } from 'typeorm';

// Any fixed 64-bit number works; this one spells "sessmigr" in ASCII.
export const MIGRATION_LOCK_KEY = '8315173848271906162';

/**
 * Applies pending migrations while holding a PostgreSQL advisory lock, so that instances
 * booting together run them once: the others wait, then find nothing pending.
 *
 * On one connection whose statement_timeout is off meanwhile: the pool's timeout is meant for
 * requests, while a migration over a large table (AuditPartitions copies every audit event)
 * takes as long as it takes, and so does waiting for another instance's migrations.
 */
export async function runMigrationsLocked(dataSource: DataSource): Promise<void> {
  const logger = new Logger('Migrations');
  const runner = dataSource.createQueryRunner();
  await runner.connect();
  try {
    await runner.query('SET statement_timeout = 0');
    await lockPolling(runner);
    try {
      const executor = new MigrationExecutor(dataSource, runner);
      executor.transaction = 'each';
      const applied = await executor.executePendingMigrations();
      if (applied.length) logger.log(`Applied ${applied.length} migration(s): ${applied.map((m) => m.name).join(', ')}`);
    } finally {
      await runner.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
    }
  } finally {
    // The connection goes back to the pool with the pool's timeout.
    await runner.query('RESET statement_timeout').catch(() => undefined);
    await runner.release();
  }
}

/** How often an instance waiting for another's migrations asks for the lock again. */
const LOCK_POLL_MS = 250;

/**
 * Takes the migration lock, asking again until it is free rather than waiting inside one
 * `pg_advisory_lock` call: a statement that waits holds its snapshot all along, and a
 * migration that builds an index CONCURRENTLY waits for every older snapshot to go, so the
 * instance migrating would wait for the one waiting for it (a deadlock, which PostgreSQL
 * breaks by failing one of them).
 */
async function lockPolling(runner: QueryRunner): Promise<void> {
  for (;;) {
    const [{ locked }]: Array<{ locked: boolean }> = await runner.query('SELECT pg_try_advisory_lock($1) AS locked', [MIGRATION_LOCK_KEY]);
    if (locked) return;
    await sleep(LOCK_POLL_MS);
  }
}
