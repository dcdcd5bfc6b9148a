import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Where shipping to an HTTP endpoint (AUDIT_SHIP_URL) stands: the seq the last piece the
 * endpoint accepted runs through, per endpoint (its origin and path). A directory keeps its own
 * state (its newest piece's name); an endpoint cannot be asked. Whoever can write this table can
 * make the service ship a range again or skip one, and the receiver sees either: each piece's
 * `afterSeq` must be the previous one's `throughSeq` (`audit-verify --file` checks it).
 */
export class AuditShipProgress1766900000000 implements MigrationInterface {
  name = 'AuditShipProgress1766900000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE "audit_ship_progress" (
        "destination" text NOT NULL,
        "through_seq" bigint NOT NULL,
        "shipped_at" timestamptz NOT NULL,
        CONSTRAINT "PK_audit_ship_progress" PRIMARY KEY ("destination"),
        CONSTRAINT "CHK_audit_ship_progress_seq" CHECK ("through_seq" >= 0)
      )`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "audit_ship_progress"`);
  }
}
