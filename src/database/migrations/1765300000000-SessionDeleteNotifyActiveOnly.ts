import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Deleting a session that had already ended sends no notification: its end did (the update
 * trigger fires when ended_at changes), and a cache that still holds it holds it as ended,
 * which answers the same as a missing session. So the cleanup's deletes of sessions past
 * retention, tens of thousands a second, no longer run a trigger and queue a NOTIFY per row
 * (measured: README, Scale). Deleting an active session (a user deleted, an operator's SQL)
 * still notifies.
 */
export class SessionDeleteNotifyActiveOnly1765300000000 implements MigrationInterface {
  name = 'SessionDeleteNotifyActiveOnly1765300000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TRIGGER "sessions_notify_delete" ON "sessions"`);
    await queryRunner.query(`
      CREATE TRIGGER "sessions_notify_delete" AFTER DELETE ON "sessions" FOR EACH ROW
      WHEN (OLD.ended_at IS NULL)
      EXECUTE FUNCTION "sessionary_notify_session_change"()`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TRIGGER "sessions_notify_delete" ON "sessions"`);
    await queryRunner.query(`
      CREATE TRIGGER "sessions_notify_delete" AFTER DELETE ON "sessions" FOR EACH ROW
      EXECUTE FUNCTION "sessionary_notify_session_change"()`);
  }
}
