import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * A user's two audit indexes, (user_id, created_at, seq) and (user_id, type, created_at, seq),
 * become one: (user_id, created_at, seq, type). Both were keyed by the user, so every event
 * of a user wrote a leaf of each at a random place in a large index (with the chain's
 * (chain_key, chain_pos), three of the about 3.6 random pages an event costs at scale: README,
 * Scale). A page of a user's events of one type reads the same index in the same order and
 * tests `type` on the index's own entries, so only the matching events are fetched from the
 * table: it reads the user's entries in each month it spans, as the page of all their
 * events does, instead of only that type's.
 *
 * Building it reads the whole log under a lock that holds audit writes back (CONCURRENTLY is
 * not available for a partitioned table): on a large log, migrate in a quiet hour.
 */
export class AuditUserIndexMerged1766700000000 implements MigrationInterface {
  name = 'AuditUserIndexMerged1766700000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`SET LOCAL statement_timeout = 0`);
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_user_time_type" ON "audit_events" ("user_id", "created_at", "seq", "type")`);
    await queryRunner.query(`DROP INDEX "IDX_audit_events_user_time"`);
    await queryRunner.query(`DROP INDEX "IDX_audit_events_user_type_time"`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`SET LOCAL statement_timeout = 0`);
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_user_time" ON "audit_events" ("user_id", "created_at", "seq")`);
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_user_type_time" ON "audit_events" ("user_id", "type", "created_at", "seq")`);
    await queryRunner.query(`DROP INDEX "IDX_audit_events_user_time_type"`);
  }
}
