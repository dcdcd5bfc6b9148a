import { DataSource, QueryRunner } from 'typeorm';
import { sql } from './sql';

/** What `withSessionAdvisoryLock` returns when another process holds the lock. */
export const LOCK_TAKEN = Symbol('advisory lock taken');

/**
 * Runs `work` on a connection of its own while it holds the session-level advisory lock `key`,
 * or returns LOCK_TAKEN at once when another process holds it. Session-level, not a
 * transaction's: the work may span many transactions (a cleanup's batches, a month's drop), and
 * the lock goes when the work ends, or with the connection if that breaks.
 */
export async function withSessionAdvisoryLock<T>(
  dataSource: DataSource,
  key: string,
  work: (runner: QueryRunner) => Promise<T>,
): Promise<T | typeof LOCK_TAKEN> {
  const runner = dataSource.createQueryRunner();
  await runner.connect();
  try {
    const {
      rows: [{ locked }],
    } = await sql<{ locked: boolean }>(runner.manager, 'SELECT pg_try_advisory_lock($1) AS locked', [key]);
    if (!locked) return LOCK_TAKEN;
    try {
      return await work(runner);
    } finally {
      await sql(runner.manager, 'SELECT pg_advisory_unlock($1)', [key]);
    }
  } finally {
    await runner.release();
  }
}
