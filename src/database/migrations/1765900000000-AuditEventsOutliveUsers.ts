import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * audit_events.user_id loses its foreign key to users, as session_id never had one: the events
 * outlive what they name. `ON DELETE SET NULL` rewrote the events of a deleted user, and the
 * hash chain, which covers user_id, then reported every one of them as tampered with. The key
 * also cost each appended event a lookup and a KEY SHARE lock on the user's row (a dirtied
 * users page; about 15 % of the cleanup's append of 250 events at 10M events).
 */
export class AuditEventsOutliveUsers1765900000000 implements MigrationInterface {
  name = 'AuditEventsOutliveUsers1765900000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`ALTER TABLE "audit_events" DROP CONSTRAINT "FK_audit_events_user"`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`SET LOCAL statement_timeout = 0`);
    // What the key would have done when those users were deleted (and what breaks their chains).
    await queryRunner.query(
      `UPDATE "audit_events" e SET "user_id" = NULL WHERE "user_id" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "users" u WHERE u."id" = e."user_id")`,
    );
    await queryRunner.query(
      `ALTER TABLE "audit_events" ADD CONSTRAINT "FK_audit_events_user" FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE SET NULL`,
    );
  }
}
