import { MigrationInterface, QueryRunner } from 'typeorm';

/** What made the update trigger notify until now (SessionChangeNotifications). */
const CHANGED = `NEW.ended_at IS DISTINCT FROM OLD.ended_at
         OR NEW.absolute_expires_at <> OLD.absolute_expires_at
         OR NEW.idle_expires_at < OLD.idle_expires_at
         OR NEW.user_id <> OLD.user_id
         OR NEW.id <> OLD.id`;

/**
 * Ending a session whose deadline has already passed, and changing nothing else about it,
 * sends no notification. No cache can answer for it any more: an instance answers from memory
 * only while its estimate of the database's clock, plus a margin at least its uncertainty, is
 * before both deadlines it holds (judgeCachedSession), and the deadlines it holds are never
 * later than the row's (they were read from the row, an idle deadline only moves later by
 * activity writes, and moving one earlier notifies). So once the row's earlier deadline is at
 * or before `now()` every cache re-reads the row or refuses the session, and the end changes
 * no answer. That is every session the cleanup ends (it picks those whose idle deadline is
 * past, and ends them at that deadline), hundreds a batch: each notification cost a trigger
 * call and a queued NOTIFY (5.2–6.1 ms of a 48–50 ms batch of 250 at 10M sessions, measured:
 * README, Scale), and every instance's listener received and applied it. Ending an active
 * session, by any path, notifies as before.
 */
export class SessionExpiredEndNotifySkip1766600000000 implements MigrationInterface {
  name = 'SessionExpiredEndNotifySkip1766600000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TRIGGER "sessions_notify_update" ON "sessions"`);
    await queryRunner.query(`
      CREATE TRIGGER "sessions_notify_update" AFTER UPDATE ON "sessions" FOR EACH ROW
      WHEN ((${CHANGED})
        AND NOT (OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL
                 AND LEAST(OLD.idle_expires_at, OLD.absolute_expires_at) <= now()
                 AND NEW.id = OLD.id AND NEW.user_id = OLD.user_id
                 AND NEW.absolute_expires_at = OLD.absolute_expires_at
                 AND NEW.idle_expires_at >= OLD.idle_expires_at))
      EXECUTE FUNCTION "sessionary_notify_session_change"()`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TRIGGER "sessions_notify_update" ON "sessions"`);
    await queryRunner.query(`
      CREATE TRIGGER "sessions_notify_update" AFTER UPDATE ON "sessions" FOR EACH ROW
      WHEN (${CHANGED})
      EXECUTE FUNCTION "sessionary_notify_session_change"()`);
  }
}
