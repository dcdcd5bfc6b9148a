import { MigrationInterface, QueryRunner } from 'typeorm';
import { lockingBriefly } from '../audit-index-build';
import { AUDIT_NO_TRUNCATE_TRIGGER, refuseTruncateSql } from '../audit-truncate';

/**
 * audit_events and audit_checkpoints refuse TRUNCATE too (AuditAppendOnly's row triggers never
 * fire on it): the service never truncates either, so a TRUNCATE on its connection is a bug or
 * someone using that connection, as with UPDATE and DELETE. A statement trigger is not cloned to
 * partitions, and TRUNCATE of one month fires only that month's triggers: every month gets its
 * own here, and the months made later get theirs where they are made (AuditPartitionsService,
 * AuditMonthOrder). Dropping a month (retention) is DROP, not TRUNCATE, and fires none.
 *
 * Outside a transaction, one table at a time, each waiting at most briefly for its lock and
 * trying again (lockingBriefly): CREATE TRIGGER takes a lock that audit writes wait for, and in
 * one transaction the lock on each table taken would be held while the next waited (behind a
 * long VACUUM of a month, say), with every login waiting too. Every step can be repeated.
 *
 * Not a wall against the owner or a superuser (ALTER TABLE ... DISABLE TRIGGER): see AuditAppendOnly.
 */
export class AuditTruncateRefused1767000000000 implements MigrationInterface {
  name = 'AuditTruncateRefused1767000000000';
  transaction = false;

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE OR REPLACE FUNCTION "audit_refuse_truncate"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION '% is append-only: TRUNCATE refused', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
      END
      $$`);
    // The months first, the tables every write goes through last.
    const months: Array<{ name: string }> = await queryRunner.query(
      `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1`,
    );
    for (const table of [...months.map((m) => m.name), 'audit_checkpoints', 'audit_events']) {
      await lockingBriefly(queryRunner, refuseTruncateSql(table));
    }
  }

  /**
   * TypeORM reverts in a transaction whatever `transaction` says (undoLastMigration), so no
   * brief-lock retries here (the first lock timeout would abort the transaction): each DROP
   * TRIGGER waits for its table, holding the ones before it until COMMIT. Revert in a quiet moment.
   */
  public async down(queryRunner: QueryRunner): Promise<void> {
    // Every table with the trigger, a month detached and not yet dropped included; the log last.
    const tables: Array<{ name: string }> = await queryRunner.query(
      `SELECT c.relname AS name FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE t.tgname = $1 AND c.relnamespace = current_schema()::regnamespace ORDER BY c.relname = 'audit_events', 1`,
      [AUDIT_NO_TRUNCATE_TRIGGER],
    );
    for (const { name } of tables) await queryRunner.query(`DROP TRIGGER IF EXISTS "${AUDIT_NO_TRUNCATE_TRIGGER}" ON "${name}"`);
    await queryRunner.query(`DROP FUNCTION IF EXISTS "audit_refuse_truncate"()`);
  }
}
