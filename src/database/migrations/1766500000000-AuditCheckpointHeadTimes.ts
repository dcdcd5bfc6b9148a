import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Where to look for a recorded head's event: its time (`created_at`, the partition key), kept
 * beside the recorded head, so that the checkpoint's check that a moved chain still holds its
 * recorded event reads one month's index instead of every month's (1.7 ms a chain at 50M events,
 * nearly all of a checkpoint's time, against 0.16 ms). Only a hint, outside the digest: a time
 * that finds no event (NULL for heads recorded before this, or wrong) makes the check look in
 * every month as before, never skips it. Nullable without a default: no table rewrite.
 */
export class AuditCheckpointHeadTimes1766500000000 implements MigrationInterface {
  name = 'AuditCheckpointHeadTimes1766500000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`ALTER TABLE "audit_checkpoint_heads" ADD COLUMN "event_at" timestamptz`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`ALTER TABLE "audit_checkpoint_heads" DROP COLUMN "event_at"`);
  }
}
