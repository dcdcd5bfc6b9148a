import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The ACCESS_TOKEN_TTL of every process that issued tokens lately, so that a rotation keeps a
 * retiring key verifying for the longest lifetime of the tokens it signed, and waits as long as
 * the longest JWKS max-age before a next key signs, whoever rotates: until 0.28.0 each used its
 * own setting, and `keys rotate` from a shell without the service's (900 s by default) retired
 * a key an hour-long token still carried. One row per lifetime, refreshed by the processes
 * issuing under it (TokenLifetimeRecorder); a row counts while tokens issued under it may live
 * (KeyRotationService).
 */
export class AccessTokenLifetimes1767500000000 implements MigrationInterface {
  name = 'AccessTokenLifetimes1767500000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE "access_token_lifetimes" (
        "ttl_seconds" integer PRIMARY KEY CHECK ("ttl_seconds" > 0),
        "seen_at" timestamptz NOT NULL DEFAULT now()
      )`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "access_token_lifetimes"`);
  }
}
