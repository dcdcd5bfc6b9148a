import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * sessions.auth_time: when the session's user last proved who they are (the login, or a
 * reauthentication), the `auth_time` claim of its access tokens (RFC 9470 step-up). Existing
 * sessions get their creation time, which is when their login happened.
 *
 * The default now() keeps instances of the previous version working during a rolling deploy
 * (their INSERT does not name the column), and is right for them: a session is opened by a
 * login. The backfill changes no deadline, so the sessions_notify_update trigger stays quiet
 * and no session cache is flushed.
 */
export class SessionAuthTime1765500000000 implements MigrationInterface {
  name = 'SessionAuthTime1765500000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    // Added without the default first: with it, existing rows would read now(), a fresh login.
    await queryRunner.query(`ALTER TABLE "sessions" ADD COLUMN "auth_time" timestamptz`);
    await queryRunner.query(`UPDATE "sessions" SET "auth_time" = "created_at"`);
    await queryRunner.query(`ALTER TABLE "sessions" ALTER COLUMN "auth_time" SET NOT NULL, ALTER COLUMN "auth_time" SET DEFAULT now()`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`ALTER TABLE "sessions" DROP COLUMN "auth_time"`);
  }
}
