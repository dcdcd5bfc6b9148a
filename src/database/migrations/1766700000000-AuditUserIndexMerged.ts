import { MigrationInterface, QueryRunner } from 'typeorm';
import { createAuditIndexMonthByMonth, lockingBriefly } from '../audit-index-build';

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
 * Built without holding audit writes (so logins) back while the months are read, month by
 * month (createAuditIndexMonthByMonth), so outside a transaction; dropping the two old
 * indexes needs the table itself, so it waits only briefly at a time (lockingBriefly).
 */
export class AuditUserIndexMerged1766700000000 implements MigrationInterface {
  name = 'AuditUserIndexMerged1766700000000';
  transaction = false;

  public async up(queryRunner: QueryRunner): Promise<void> {
    await createAuditIndexMonthByMonth(queryRunner, INDEX, 'user_time_type', COLUMNS);
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
