import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The ring of access-token signing keys (src/keys). A key is `next` (published, not signing
 * yet), `current` (signing), `retiring` (verifying until `verify_until`, when every token it
 * signed has expired) or `retired` (kept for the record, its private part erased). At most one
 * key is current and one next.
 *
 * `private_key` is encrypted with AES-256-GCM under KEY_ENCRYPTION_KEY (the kid and algorithm
 * are its additional data, so a ciphertext moved to another row does not decrypt). Every change
 * notifies `sessionary_signing_keys` from a trigger, in the changing transaction, so every
 * instance reloads the ring whoever changed it (the service, the CLI, an operator).
 */
export class SigningKeys1765600000000 implements MigrationInterface {
  name = 'SigningKeys1765600000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE "signing_keys" (
        "kid" varchar(64) PRIMARY KEY,
        "algorithm" varchar(8) NOT NULL CHECK ("algorithm" IN ('ES256', 'HS256')),
        "state" varchar(8) NOT NULL CHECK ("state" IN ('next', 'current', 'retiring', 'retired')),
        "public_jwk" jsonb,
        "private_key" bytea,
        "from_jwt_secret" boolean NOT NULL DEFAULT false,
        "created_at" timestamptz NOT NULL DEFAULT now(),
        "activated_at" timestamptz,
        "verify_until" timestamptz,
        "retired_at" timestamptz,
        CHECK (("state" = 'retired') = ("private_key" IS NULL)),
        CHECK (("algorithm" = 'ES256') = ("public_jwk" IS NOT NULL)),
        CHECK ("state" <> 'retiring' OR "verify_until" IS NOT NULL)
      )`);
    await queryRunner.query(`CREATE UNIQUE INDEX "signing_keys_one_current" ON "signing_keys" ("state") WHERE "state" = 'current'`);
    await queryRunner.query(`CREATE UNIQUE INDEX "signing_keys_one_next" ON "signing_keys" ("state") WHERE "state" = 'next'`);
    await queryRunner.query(`
      CREATE FUNCTION "sessionary_notify_signing_keys"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify('sessionary_signing_keys', TG_OP);
        RETURN NULL;
      END $$`);
    await queryRunner.query(`
      CREATE TRIGGER "signing_keys_notify" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "signing_keys"
      FOR EACH STATEMENT EXECUTE FUNCTION "sessionary_notify_signing_keys"()`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "signing_keys"`);
    await queryRunner.query(`DROP FUNCTION "sessionary_notify_signing_keys"()`);
  }
}
