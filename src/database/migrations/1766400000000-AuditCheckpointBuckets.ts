import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Checkpoint digests of format 2 (see checkpoint-heads-digest.ts): the checkpoint job keeps
 * each bucket's digest of the heads it recorded, so that a checkpoint hashes again only the
 * buckets whose heads moved; and a checkpoint's digest now says its format (`v2:<hex>`, 67
 * characters). The buckets start empty: the first checkpoint after the upgrade, whose last
 * checkpoint is of format 1, hashes them all.
 */
export class AuditCheckpointBuckets1766400000000 implements MigrationInterface {
  name = 'AuditCheckpointBuckets1766400000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    // fillfactor: every checkpoint updates the buckets it touched (HOT, no index changes).
    await queryRunner.query(`
      CREATE TABLE "audit_checkpoint_buckets" (
        "bucket" varchar(40) COLLATE "C" NOT NULL,
        "chains" bigint NOT NULL,
        "events" bigint NOT NULL,
        "digest" char(64) NOT NULL,
        CONSTRAINT "PK_audit_checkpoint_buckets" PRIMARY KEY ("bucket")
      ) WITH (fillfactor = 70)`);
    await queryRunner.query(`ALTER TABLE "audit_checkpoints" ALTER COLUMN "digest" TYPE varchar(67)`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "audit_checkpoint_buckets"`);
    // Back to char(64) unless a format-2 digest was written (a checkpoint is never rewritten:
    // its MAC covers the digest). Earlier code reads either type the same; it verifies again
    // once it wrote a checkpoint of its own format.
    await queryRunner.query(`
      DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM "audit_checkpoints" WHERE length("digest") > 64) THEN
          ALTER TABLE "audit_checkpoints" ALTER COLUMN "digest" TYPE char(64);
        END IF;
      END $$`);
  }
}
