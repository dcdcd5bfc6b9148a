import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Clients (identifier + IP, hashed together) that logged in successfully: they are not held
 * by the identifier's back-off, so an attacker elsewhere cannot lock a user out (ASVS 6.1.1).
 */
export class LoginKnownClients1764212400000 implements MigrationInterface {
  name = 'LoginKnownClients1764212400000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE "login_known_clients" (
        "key" char(64) NOT NULL,
        "last_success_at" timestamptz NOT NULL,
        CONSTRAINT "PK_login_known_clients" PRIMARY KEY ("key")
      )`);
    await queryRunner.query(`CREATE INDEX "IDX_login_known_clients_last_success_at" ON "login_known_clients" ("last_success_at")`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "login_known_clients"`);
  }
}
