import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * audit_chain_heads gains the time of each chain's newest event, so that a writer can keep
 * every chain's times rising with its positions (retention drops whole months, and a month
 * must hold a whole stretch of every chain) even when instances choose the time themselves
 * (AuditService's one-statement append). Null until the chain's next event: the old heads were
 * all written with PostgreSQL's clock under the head's lock, which rises on its own.
 */
export class AuditHeadTimes1765400000000 implements MigrationInterface {
  name = 'AuditHeadTimes1765400000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`ALTER TABLE "audit_chain_heads" ADD COLUMN "last_event_at" timestamptz`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`ALTER TABLE "audit_chain_heads" DROP COLUMN "last_event_at"`);
  }
}
