import { MigrationInterface, QueryRunner } from 'typeorm';

export class LoginThrottleAndRateLimits1764205200000 implements MigrationInterface {
  name = 'LoginThrottleAndRateLimits1764205200000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    // Failed-login counters per identifier and per client IP, shared by every instance.
    // The key is a SHA-256 of the identifier or IP, so the table never holds what was typed
    // (people type passwords into username fields).
    await queryRunner.query(`
      CREATE TABLE "login_throttle" (
        "key" char(64) NOT NULL,
        "failures" integer NOT NULL,
        "last_failure_at" timestamptz NOT NULL,
        "locked_until" timestamptz,
        CONSTRAINT "PK_login_throttle" PRIMARY KEY ("key")
      )`);
    await queryRunner.query(`CREATE INDEX "IDX_login_throttle_last_failure_at" ON "login_throttle" ("last_failure_at")`);

    // The general per-IP request limit (@nestjs/throttler's storage). UNLOGGED: written on
    // every request, worthless after a crash, so not worth the WAL.
    await queryRunner.query(`
      CREATE UNLOGGED TABLE "rate_limits" (
        "key" varchar(128) NOT NULL,
        "hits" integer NOT NULL,
        "window_ends_at" timestamptz NOT NULL,
        "blocked_until" timestamptz,
        CONSTRAINT "PK_rate_limits" PRIMARY KEY ("key")
      )`);
    await queryRunner.query(`CREATE INDEX "IDX_rate_limits_window_ends_at" ON "rate_limits" ("window_ends_at")`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "rate_limits"`);
    await queryRunner.query(`DROP TABLE "login_throttle"`);
  }
}
