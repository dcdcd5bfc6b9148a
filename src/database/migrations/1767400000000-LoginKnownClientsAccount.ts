import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Which account each known client logged into (a keyed digest of the account's id, as the rows'
 * keys are digests), so that a password change can take back the lockout exemption of every
 * other place the account was logged into (LoginThrottleService.forgetOtherClients). Until
 * 0.25.0 it could not: an attacker who logged in once with a phished password kept the
 * exemption from that address for 30 days after the owner changed it (SECURITY.md, 6.3.1).
 *
 * The rows written before name no account, so no password change could ever take them back:
 * they are deleted here, once (as CounterKeysKeyed did). A user's places become known again at
 * their next successful login there; until then only an attacker holding the identifier in
 * back-off at that moment could tell the difference. A row being written waits no more than
 * five seconds; the boot then stops, and the migration runs again at the next start.
 */
export class LoginKnownClientsAccount1767400000000 implements MigrationInterface {
  name = 'LoginKnownClientsAccount1767400000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`SET LOCAL lock_timeout = '5s'`);
    // The table's lock first: a DELETE first would hold rows an older instance's login may be
    // waiting for while it holds the table, and the ALTER's lock would then deadlock with it.
    await queryRunner.query(`ALTER TABLE "login_known_clients" ADD COLUMN "account" char(64)`);
    await queryRunner.query(`DELETE FROM "login_known_clients"`);
    await queryRunner.query(`CREATE INDEX "IDX_login_known_clients_account" ON "login_known_clients" ("account") WHERE "account" IS NOT NULL`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP INDEX "IDX_login_known_clients_account"`);
    await queryRunner.query(`ALTER TABLE "login_known_clients" DROP COLUMN "account"`);
  }
}
