import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Whether a signing-key ring was ever made here, in a table of its own that rebuilding the ring
 * (`TRUNCATE signing_keys`, the README's step after a leaked KEY_ENCRYPTION_KEY) leaves as it
 * is. JWT_SECRET seeds only the first ring of a deployment, the one that takes over from the
 * tokens it signed before the ring existed: until 0.24.0 every boot that found no current key
 * seeded it again, so a rebuilt ring made a JWT_SECRET that had leaked with the rest of the
 * environment the current HS256 key, or a retiring ES256-era key for kid-less tokens.
 * A ring already here is recorded, as of its oldest key.
 */
export class SigningKeyRingMade1767300000000 implements MigrationInterface {
  name = 'SigningKeyRingMade1767300000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE "signing_key_ring_made" (
        "one" boolean PRIMARY KEY DEFAULT true CHECK ("one"),
        "made_at" timestamptz NOT NULL DEFAULT now()
      )`);
    await queryRunner.query(`INSERT INTO "signing_key_ring_made" ("made_at") SELECT min("created_at") FROM "signing_keys" HAVING count(*) > 0`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "signing_key_ring_made"`);
  }
}
