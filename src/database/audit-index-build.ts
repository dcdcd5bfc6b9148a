import { Logger } from '@nestjs/common';
import { setTimeout as sleep } from 'node:timers/promises';
import type { QueryRunner } from 'typeorm';
import { PG_LOCK_NOT_AVAILABLE, pgErrorCode } from './pg-errors';

/** How long a statement that locks the whole log waits for it before it lets the writers by. */
const LOCK_WAIT_MS = 200;

/**
 * Builds an index of audit_events without holding audit writes (so logins) back while the
 * months are read, for migrations that run outside a transaction: the partitioned index is
 * created on the parent alone (invalid, no rows read; partitions created meanwhile get theirs
 * at once), then each month's index CONCURRENTLY and attached (which locks out no writer), and
 * the parent is valid once the last is. Every step can be repeated, so a run that stopped half
 * way (a crash, a failed build, whose invalid index is dropped and built again) is completed
 * by the next. `definition` is what follows the table's name: the columns, and a predicate.
 */
export async function createAuditIndexMonthByMonth(queryRunner: QueryRunner, index: string, monthSuffix: string, definition: string): Promise<void> {
  // Looked up first: even with IF NOT EXISTS, CREATE INDEX waits for the writes under way.
  const [{ exists }]: Array<{ exists: boolean }> = await queryRunner.query(`SELECT to_regclass($1) IS NOT NULL AS exists`, [`"${index}"`]);
  if (!exists) await lockingBriefly(queryRunner, `CREATE INDEX "${index}" ON ONLY "audit_events" ${definition}`);
  const pending: Array<{ partition: string }> = await queryRunner.query(
    `SELECT c.relname AS partition FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
      WHERE i.inhparent = 'audit_events'::regclass
        AND NOT EXISTS (SELECT 1 FROM pg_inherits a JOIN pg_index x ON x.indexrelid = a.inhrelid
                         WHERE a.inhparent = '"${index}"'::regclass AND x.indrelid = c.oid)
      ORDER BY c.relname`,
  );
  for (const { partition } of pending) {
    const name = `${partition}_${monthSuffix}`;
    await queryRunner.query(`DROP INDEX CONCURRENTLY IF EXISTS "${name}"`);
    await queryRunner.query(`CREATE INDEX CONCURRENTLY "${name}" ON "${partition}" ${definition}`);
    await queryRunner.query(`ALTER INDEX "${index}" ATTACH PARTITION "${name}"`);
  }
}

/**
 * Runs `statement` once it gets its locks within LOCK_WAIT_MS, trying again each second until
 * then. For statements that need audit_events itself (creating or dropping an index of the
 * parent): they wait for whoever holds it (writes take milliseconds, but an export or a
 * verification reads for minutes), and a lock request that waits makes every later writer
 * queue behind it; so it waits briefly, lets the writers by, and tries again.
 */
export async function lockingBriefly(queryRunner: QueryRunner, statement: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await queryRunner.query(`SET lock_timeout = ${LOCK_WAIT_MS}`);
      await queryRunner.query(statement);
      return;
    } catch (error) {
      if (pgErrorCode(error) !== PG_LOCK_NOT_AVAILABLE) throw error;
      if (attempt % 60 === 0) new Logger('Migrations').warn(`Still waiting for a moment without long readers of audit_events to run: ${statement}`);
      await sleep(1000);
    } finally {
      await queryRunner.query(`RESET lock_timeout`).catch(() => undefined);
    }
  }
}
