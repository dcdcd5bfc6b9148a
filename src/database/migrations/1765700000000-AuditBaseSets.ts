import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Where each audit chain starts once months are dropped, prepared ahead of the drop as one set
 * per month (see AuditBaseSets): audit_base_sets holds each set's keyed digest and whether its
 * month is dropped; audit_chain_bases holds the sets' rows, one partition per month, so that a
 * set no longer needed goes with one DROP TABLE. Replaces, for drops from now on, the per-chain
 * base columns of audit_chain_heads (a MAC and an UPDATE per chain at the drop: seconds of it at
 * 100k chains); those stay, read by the verifier until a month is dropped the new way.
 */
export class AuditBaseSets1765700000000 implements MigrationInterface {
  name = 'AuditBaseSets1765700000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE "audit_base_sets" (
        "month" date PRIMARY KEY,
        "chains" integer NOT NULL,
        "events" bigint NOT NULL,
        "max_seq" bigint NOT NULL,
        "digest" char(64) NOT NULL,
        "mac" char(64) NOT NULL,
        "prepared_at" timestamptz NOT NULL DEFAULT now(),
        "dropped_at" timestamptz
      )`);
    await queryRunner.query(`
      CREATE TABLE "audit_chain_bases" (
        "month" date NOT NULL,
        "chain_key" text NOT NULL,
        "position" bigint NOT NULL,
        "hash" char(64) NOT NULL,
        PRIMARY KEY ("month", "chain_key")
      ) PARTITION BY LIST ("month")`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "audit_chain_bases"`);
    await queryRunner.query(`DROP TABLE "audit_base_sets"`);
  }
}
