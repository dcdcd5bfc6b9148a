import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The last tick of each scheduled job that some instance ran: every instance fires each tick,
 * and a conditional upsert lets exactly one of them claim it (the advisory lock alone only
 * keeps runs from overlapping, so a fast run could be followed by a second one for the same tick).
 */
export class ScheduledJobRuns1764903600000 implements MigrationInterface {
  name = 'ScheduledJobRuns1764903600000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE "scheduled_job_runs" (
        "name" varchar(64) NOT NULL,
        "last_tick" timestamptz NOT NULL,
        "runs" bigint NOT NULL DEFAULT 0,
        CONSTRAINT "PK_scheduled_job_runs" PRIMARY KEY ("name")
      )`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "scheduled_job_runs"`);
  }
}
