import { MigrationInterface, QueryRunner } from 'typeorm';
import { AUDIT_NO_TRUNCATE_TRIGGER, refuseTruncateSql } from '../audit-truncate';

/**
 * audit_events and audit_checkpoints refuse TRUNCATE too (AuditAppendOnly's row triggers never
 * fire on it): the service never truncates either, so a TRUNCATE on its connection is a bug or
 * someone using that connection, as with UPDATE and DELETE. A statement trigger is not cloned to
 * partitions, and TRUNCATE of one month fires only that month's triggers: every month gets its
 * own here, and the months made later get theirs where they are made (AuditPartitionsService,
 * AuditMonthOrder). Dropping a month (retention) is DROP, not TRUNCATE, and fires none.
 *
 * Not a wall against the owner or a superuser (ALTER TABLE ... DISABLE TRIGGER): see AuditAppendOnly.
 */
export class AuditTruncateRefused1767000000000 implements MigrationInterface {
  name = 'AuditTruncateRefused1767000000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE FUNCTION "audit_refuse_truncate"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION '% is append-only: TRUNCATE refused', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
      END
      $$`);
    for (const table of await tables(queryRunner)) await queryRunner.query(refuseTruncateSql(table));
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    for (const table of await tables(queryRunner)) await queryRunner.query(`DROP TRIGGER IF EXISTS "${AUDIT_NO_TRUNCATE_TRIGGER}" ON "${table}"`);
    await queryRunner.query(`DROP FUNCTION "audit_refuse_truncate"()`);
  }
}

/** audit_events, each of its months, and audit_checkpoints (in the current schema). */
async function tables(queryRunner: QueryRunner): Promise<string[]> {
  const rows: Array<{ name: string }> = await queryRunner.query(
    `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1`,
  );
  return ['audit_events', 'audit_checkpoints', ...rows.map((r) => r.name)];
}
