import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The heads each checkpoint states move out of the chain heads' rows into a table of their own,
 * which only the checkpoint job writes. A checkpoint then copies the changed heads without
 * locking them (it reads them in one snapshot), so a writer never waits for a checkpoint: with
 * the copy in the heads' own rows, the login or refresh of every user active since the last
 * checkpoint waited for it (4.2–4.7 s at 944k chains, while it digested every head).
 */
export class AuditCheckpointHeads1766300000000 implements MigrationInterface {
  name = 'AuditCheckpointHeads1766300000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    // fillfactor: every checkpoint updates the rows of the heads that moved (HOT, no index changes).
    await queryRunner.query(`
      CREATE TABLE "audit_checkpoint_heads" (
        "chain_key" varchar(40) COLLATE "C" NOT NULL,
        "position" bigint NOT NULL,
        "hash" char(64) NOT NULL,
        CONSTRAINT "PK_audit_checkpoint_heads" PRIMARY KEY ("chain_key")
      ) WITH (fillfactor = 70)`);
    await queryRunner.query(`
      INSERT INTO "audit_checkpoint_heads" ("chain_key", "position", "hash")
      SELECT "chain_key", "checkpoint_position", "checkpoint_hash" FROM "audit_chain_heads" WHERE "checkpoint_position" IS NOT NULL`);
    // Statistics from the start (see the checkpoint's ANALYZE after a large copy).
    await queryRunner.query(`ANALYZE "audit_checkpoint_heads"`);
    await queryRunner.query(`ALTER TABLE "audit_chain_heads" DROP COLUMN "checkpoint_position", DROP COLUMN "checkpoint_hash"`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`ALTER TABLE "audit_chain_heads" ADD COLUMN "checkpoint_position" bigint, ADD COLUMN "checkpoint_hash" char(64)`);
    await queryRunner.query(`
      UPDATE "audit_chain_heads" h SET "checkpoint_position" = c."position", "checkpoint_hash" = c."hash"
        FROM "audit_checkpoint_heads" c WHERE c."chain_key" = h."chain_key"`);
    await queryRunner.query(`DROP TABLE "audit_checkpoint_heads"`);
  }
}
