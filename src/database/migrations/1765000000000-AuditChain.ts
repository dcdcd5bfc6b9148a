import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The audit log's keyed hash chain: one chain per user plus one for events without a user.
 * Each event gets its chain, position, the previous event's hash and its own HMAC; the head of
 * every chain is one row of audit_chain_heads, whose row lock serialises the writers of that
 * chain only. audit_checkpoints keeps keyed digests of all heads.
 *
 * The chain columns stay nullable: a migration run by the TypeORM CLI does not know
 * AUDIT_HMAC_KEY, so the events that exist before it are sealed, in seq order, by the
 * application at boot (AuditChainService.sealPending, under an advisory lock). Only those:
 * audit_chain_seal holds the last seq this migration saw, and is emptied once they are
 * sealed, so that a row inserted later without the chain stays unsealed and is reported by
 * the verifier instead of being laundered into a chain. Chain keys sort byte-wise
 * (COLLATE "C") so that PostgreSQL and the verifier agree on the order of the chains.
 */
export class AuditChain1765000000000 implements MigrationInterface {
  name = 'AuditChain1765000000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      ALTER TABLE "audit_events"
        ADD COLUMN "chain_key" varchar(40) COLLATE "C",
        ADD COLUMN "chain_pos" bigint,
        ADD COLUMN "prev_hash" char(64),
        ADD COLUMN "hash" char(64),
        ADD CONSTRAINT "CHK_audit_events_chain" CHECK (
          ("chain_key" IS NULL AND "chain_pos" IS NULL AND "prev_hash" IS NULL AND "hash" IS NULL)
          OR ("chain_key" IS NOT NULL AND "chain_pos" >= 1 AND "prev_hash" IS NOT NULL AND "hash" IS NOT NULL))`);
    // One event per position (a chain cannot fork even if a writer skipped the head lock); the
    // verifier's keyset walk.
    await queryRunner.query(`CREATE UNIQUE INDEX "UQ_audit_events_chain" ON "audit_events" ("chain_key", "chain_pos")`);
    // The sealer's queue: events written before the chain existed.
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_unsealed" ON "audit_events" ("seq") WHERE "hash" IS NULL`);
    await queryRunner.query(`
      CREATE TABLE "audit_chain_heads" (
        "chain_key" varchar(40) COLLATE "C" NOT NULL,
        "position" bigint NOT NULL,
        "hash" char(64) NOT NULL,
        "checkpoint_position" bigint,
        "checkpoint_hash" char(64),
        CONSTRAINT "PK_audit_chain_heads" PRIMARY KEY ("chain_key")
      ) WITH (fillfactor = 70)`);
    await queryRunner.query(`CREATE TABLE "audit_chain_seal" ("up_to_seq" bigint NOT NULL)`);
    await queryRunner.query(`INSERT INTO "audit_chain_seal" SELECT max("seq") FROM "audit_events" HAVING count(*) > 0`);
    await queryRunner.query(`
      CREATE TABLE "audit_checkpoints" (
        "id" bigint NOT NULL,
        "created_at" timestamptz NOT NULL,
        "chains" bigint NOT NULL,
        "events" bigint NOT NULL,
        "max_seq" bigint NOT NULL,
        "digest" char(64) NOT NULL,
        "prev_mac" char(64) NOT NULL,
        "mac" char(64) NOT NULL,
        CONSTRAINT "PK_audit_checkpoints" PRIMARY KEY ("id")
      )`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "audit_checkpoints"`);
    await queryRunner.query(`DROP TABLE "audit_chain_seal"`);
    await queryRunner.query(`DROP TABLE "audit_chain_heads"`);
    await queryRunner.query(`DROP INDEX "IDX_audit_events_unsealed"`);
    await queryRunner.query(`DROP INDEX "UQ_audit_events_chain"`);
    await queryRunner.query(`
      ALTER TABLE "audit_events"
        DROP CONSTRAINT "CHK_audit_events_chain",
        DROP COLUMN "hash",
        DROP COLUMN "prev_hash",
        DROP COLUMN "chain_pos",
        DROP COLUMN "chain_key"`);
  }
}
