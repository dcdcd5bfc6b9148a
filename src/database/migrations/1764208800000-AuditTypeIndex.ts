import { MigrationInterface, QueryRunner } from 'typeorm';

/** GET /admin/audit?type=X without a user: newest events of one type across all users. */
export class AuditTypeIndex1764208800000 implements MigrationInterface {
  name = 'AuditTypeIndex1764208800000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_type_seq" ON "audit_events" ("type", "seq" DESC)`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP INDEX "IDX_audit_events_type_seq"`);
  }
}
