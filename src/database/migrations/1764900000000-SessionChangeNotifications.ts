import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Every change that can make a cached session check wrong sends a NOTIFY on
 * `sessionary_sessions`, from triggers, so it is in the same transaction as the change: a
 * rolled-back change notifies nobody, a committed one cannot forget to (whoever wrote it:
 * the service, the CLI, an operator's SQL). Payloads: `s:<session id>` (ended, a deadline moved
 * earlier, deleted, moved to another user), `u:<user id>` (role changed), `*` (sessions
 * truncated: drop everything).
 *
 * Moving the idle deadline later (activity, refresh) sends nothing: a cache that still holds
 * the earlier deadline only re-reads the row when that deadline comes near, which is safe.
 */
export class SessionChangeNotifications1764900000000 implements MigrationInterface {
  name = 'SessionChangeNotifications1764900000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE FUNCTION "sessionary_notify_session_change"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify('sessionary_sessions', 's:' || (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END)::text);
        RETURN NULL;
      END $$`);
    await queryRunner.query(`
      CREATE TRIGGER "sessions_notify_update" AFTER UPDATE ON "sessions" FOR EACH ROW
      WHEN (NEW.ended_at IS DISTINCT FROM OLD.ended_at
         OR NEW.absolute_expires_at <> OLD.absolute_expires_at
         OR NEW.idle_expires_at < OLD.idle_expires_at
         OR NEW.user_id <> OLD.user_id
         OR NEW.id <> OLD.id)
      EXECUTE FUNCTION "sessionary_notify_session_change"()`);
    await queryRunner.query(`
      CREATE TRIGGER "sessions_notify_delete" AFTER DELETE ON "sessions" FOR EACH ROW
      EXECUTE FUNCTION "sessionary_notify_session_change"()`);
    await queryRunner.query(`
      CREATE FUNCTION "sessionary_notify_sessions_truncated"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify('sessionary_sessions', '*');
        RETURN NULL;
      END $$`);
    await queryRunner.query(`
      CREATE TRIGGER "sessions_notify_truncate" AFTER TRUNCATE ON "sessions" FOR EACH STATEMENT
      EXECUTE FUNCTION "sessionary_notify_sessions_truncated"()`);
    await queryRunner.query(`
      CREATE FUNCTION "sessionary_notify_role_change"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify('sessionary_sessions', 'u:' || NEW.id::text);
        RETURN NULL;
      END $$`);
    await queryRunner.query(`
      CREATE TRIGGER "users_notify_role_change" AFTER UPDATE OF "role" ON "users" FOR EACH ROW
      WHEN (NEW.role IS DISTINCT FROM OLD.role)
      EXECUTE FUNCTION "sessionary_notify_role_change"()`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TRIGGER "users_notify_role_change" ON "users"`);
    await queryRunner.query(`DROP FUNCTION "sessionary_notify_role_change"()`);
    await queryRunner.query(`DROP TRIGGER "sessions_notify_truncate" ON "sessions"`);
    await queryRunner.query(`DROP FUNCTION "sessionary_notify_sessions_truncated"()`);
    await queryRunner.query(`DROP TRIGGER "sessions_notify_delete" ON "sessions"`);
    await queryRunner.query(`DROP TRIGGER "sessions_notify_update" ON "sessions"`);
    await queryRunner.query(`DROP FUNCTION "sessionary_notify_session_change"()`);
  }
}
