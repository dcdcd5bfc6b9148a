import { DataSource, QueryRunner } from 'typeorm';
import { sql } from './sql';

export const ADVISORY_LOCK_LOST =
  'The advisory lock was no longer held by its connection at the end of the work; DATABASE_URL must reach PostgreSQL directly or through a session-mode pooler, not a transaction-pooling one';

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
    const unlock = async (): Promise<boolean> =>
      (await sql<{ unlocked: boolean }>(runner.manager, 'SELECT pg_advisory_unlock($1) AS unlocked', [key])).rows[0].unlocked;
    let result: T;
    try {
      result = await work(runner);
    } catch (error) {
      // The work's own failure is the one to report. A transaction it left open (aborted: the
      // unlock would fail in it) is rolled back first, so that the connection goes back to the
      // pool without the lock; a broken connection took the lock with it.
      if (runner.isTransactionActive) await runner.rollbackTransaction().catch(() => undefined);
      await unlock().catch(() => false);
      throw error;
    }
    // The lock was not this connection's at the end: a transaction-pooling proxy between the
    // service and PostgreSQL ran the two statements on different server connections, and the
    // lock stays on the first, taken for good. The work did not run alone: said, not ignored
    // (the job's run counts as failed, and the log names the cause).
    if (!(await unlock())) throw new Error(ADVISORY_LOCK_LOST);
    return result;
  } finally {
    await runner.release();
  }
}
