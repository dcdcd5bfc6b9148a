import type { QueryRunner } from 'typeorm';
import { sql } from '../database/sql';

/**
 * Starts a REPEATABLE READ transaction on `runner` whose snapshot comes after a lock on
 * audit_events and each of its months (ACCESS SHARE: it blocks only DDL), for the long reads
 * that see the whole log in one snapshot (verification, export).
 *
 * A snapshot is taken by the transaction's first SELECT, and a table is locked when a statement
 * first reads it: a month swapped by DDL in between (a rewrite in chain order, AuditMonthOrder;
 * a DETACH by retention) would be read as it is now by a snapshot from before, the rewritten
 * month's events as not yet written, a detached month as gone, and the verification would
 * report the chains broken. LOCK TABLE takes no snapshot, so taken first it makes such DDL wait
 * for this transaction, or this transaction for the DDL's commit, before the snapshot is taken.
 */
export async function startAuditSnapshot(runner: QueryRunner): Promise<void> {
  await runner.startTransaction('REPEATABLE READ');
  await sql(runner.manager, 'LOCK TABLE audit_events IN ACCESS SHARE MODE');
}
