import { Logger } from '@nestjs/common';
import { setTimeout as sleep } from 'node:timers/promises';
import { MigrationInterface, QueryRunner } from 'typeorm';
import { pgErrorCode } from '../pg-errors';

const INDEX = 'IDX_audit_events_user_time_type';
const COLUMNS = `("user_id", "created_at", "seq", "type")`;

/**
 * A user's two audit indexes, (user_id, created_at, seq) and (user_id, type, created_at, seq),
 * become one: (user_id, created_at, seq, type). Both were keyed by the user, so every event
 * of a user wrote an entry of each at a random place in a large index (0.77 and 0.84 of the
 * 5.5 pages an ended session dirtied at 50M events: README, Scale). A page of a user's
 * events of one type reads the same index in the same order and tests `type` on the index's
 * own entries, so only the matching events are fetched from the table: it reads the user's
 * entries in each month it spans, as the page of all their events does, instead of only
 * that type's.
 *
 * Built without holding audit writes (so logins) back while the months are read: the
 * partitioned index is created on the parent alone (invalid, no rows read; partitions created
 * meanwhile get theirs at once), then each month's index CONCURRENTLY and attached (which
 * locks out no writer), and the parent is valid once the last is. So outside a transaction;
 * every step can be repeated, so a run that stopped half way (a crash, a failed build, whose
 * invalid index is dropped and built again) is completed by the next. Creating the parent's
 * index and dropping the two old ones need the table itself, so they wait for whoever holds it
 * (writes take milliseconds, but an export or a verification reads for minutes), and a lock
 * request that waits makes every later writer queue behind it: so they wait at most
 * LOCK_WAIT_MS at a time, let the writers by, and try again.
 */
export class AuditUserIndexMerged1766700000000 implements MigrationInterface {
  name = 'AuditUserIndexMerged1766700000000';
  transaction = false;

  public async up(queryRunner: QueryRunner): Promise<void> {
    // Looked up first: even with IF NOT EXISTS, CREATE INDEX waits for the writes under way.
    const [{ exists }]: Array<{ exists: boolean }> = await queryRunner.query(`SELECT to_regclass($1) IS NOT NULL AS exists`, [`"${INDEX}"`]);
    if (!exists) await lockingBriefly(queryRunner, `CREATE INDEX "${INDEX}" ON ONLY "audit_events" ${COLUMNS}`);
    const pending: Array<{ partition: string }> = await queryRunner.query(
      `SELECT c.relname AS partition FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_inherits a JOIN pg_index x ON x.indexrelid = a.inhrelid
                           WHERE a.inhparent = '"${INDEX}"'::regclass AND x.indrelid = c.oid)
        ORDER BY c.relname`,
    );
    for (const { partition } of pending) {
      const name = `${partition}_user_time_type`;
      await queryRunner.query(`DROP INDEX CONCURRENTLY IF EXISTS "${name}"`);
      await queryRunner.query(`CREATE INDEX CONCURRENTLY "${name}" ON "${partition}" ${COLUMNS}`);
      await queryRunner.query(`ALTER INDEX "${INDEX}" ATTACH PARTITION "${name}"`);
    }
    await lockingBriefly(queryRunner, `DROP INDEX IF EXISTS "IDX_audit_events_user_time"`);
    await lockingBriefly(queryRunner, `DROP INDEX IF EXISTS "IDX_audit_events_user_type_time"`);
  }

  /** In a transaction (TypeORM reverts that way), so built under the lock: a step back is for small logs. */
  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`SET LOCAL statement_timeout = 0`);
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_user_time" ON "audit_events" ("user_id", "created_at", "seq")`);
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_user_type_time" ON "audit_events" ("user_id", "type", "created_at", "seq")`);
    await queryRunner.query(`DROP INDEX "${INDEX}"`);
  }
}

/** How long a statement that locks the whole log waits for it before it lets the writers by. */
const LOCK_WAIT_MS = 200;
/** PostgreSQL's lock_not_available: lock_timeout expired. */
const LOCK_NOT_AVAILABLE = '55P03';

/** Runs `statement` once it gets its locks within LOCK_WAIT_MS, trying again each second until then. */
async function lockingBriefly(queryRunner: QueryRunner, statement: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await queryRunner.query(`SET lock_timeout = ${LOCK_WAIT_MS}`);
      await queryRunner.query(statement);
      return;
    } catch (error) {
      if (pgErrorCode(error) !== LOCK_NOT_AVAILABLE) throw error;
      if (attempt % 60 === 0) new Logger('Migrations').warn(`Still waiting for a moment without long readers of audit_events to run: ${statement}`);
      await sleep(1000);
    } finally {
      await queryRunner.query(`RESET lock_timeout`).catch(() => undefined);
    }
  }
}
