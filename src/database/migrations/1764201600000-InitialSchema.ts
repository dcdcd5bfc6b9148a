import { MigrationInterface, QueryRunner } from 'typeorm';

export class InitialSchema1764201600000 implements MigrationInterface {
  name = 'InitialSchema1764201600000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    // gen_random_uuid() is built in from PostgreSQL 13 on; no extension needed.
    await queryRunner.query(`
      CREATE TABLE "users" (
        "id" uuid NOT NULL DEFAULT gen_random_uuid(),
        "username" varchar(32) NOT NULL,
        "email" varchar(254) NOT NULL,
        "password_hash" varchar(100) NOT NULL,
        "role" varchar(16) NOT NULL DEFAULT 'user',
        "created_at" timestamptz NOT NULL DEFAULT now(),
        "updated_at" timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT "PK_users" PRIMARY KEY ("id"),
        CONSTRAINT "CHK_users_role" CHECK ("role" IN ('user', 'admin'))
      )`);
    // Case-insensitive uniqueness: the index is the rule, so concurrent registrations cannot
    // both win (23505 is answered with 409).
    await queryRunner.query(`CREATE UNIQUE INDEX "UQ_users_username_lower" ON "users" (lower("username"))`);
    await queryRunner.query(`CREATE UNIQUE INDEX "UQ_users_email_lower" ON "users" (lower("email"))`);

    await queryRunner.query(`
      CREATE TABLE "sessions" (
        "id" uuid NOT NULL DEFAULT gen_random_uuid(),
        "user_id" uuid NOT NULL,
        "created_at" timestamptz NOT NULL DEFAULT now(),
        "last_seen_at" timestamptz NOT NULL DEFAULT now(),
        "idle_expires_at" timestamptz NOT NULL,
        "absolute_expires_at" timestamptz NOT NULL,
        "refresh_token_hash" char(64) NOT NULL,
        "refresh_expires_at" timestamptz NOT NULL,
        "ended_at" timestamptz,
        "end_reason" varchar(32),
        "ip_address" varchar(64),
        "user_agent" varchar(512),
        CONSTRAINT "PK_sessions" PRIMARY KEY ("id"),
        CONSTRAINT "FK_sessions_user" FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE,
        CONSTRAINT "CHK_sessions_idle_within_absolute" CHECK ("idle_expires_at" <= "absolute_expires_at"),
        CONSTRAINT "CHK_sessions_end_reason" CHECK (("ended_at" IS NULL) = ("end_reason" IS NULL)),
        CONSTRAINT "CHK_sessions_end_reason_known" CHECK ("end_reason" IS NULL OR "end_reason" IN (
          'logout', 'revoked', 'revoked_by_admin', 'password_changed', 'refresh_token_reuse',
          'idle_timeout', 'absolute_timeout', 'session_limit'))
      )`);
    // Refresh: look up by token hash.
    await queryRunner.query(`CREATE UNIQUE INDEX "UQ_sessions_refresh_token_hash" ON "sessions" ("refresh_token_hash")`);
    // A user's active sessions, newest first (list, revoke-all, session limit).
    await queryRunner.query(`CREATE INDEX "IDX_sessions_user_active" ON "sessions" ("user_id", "created_at" DESC) WHERE "ended_at" IS NULL`);
    // Cleanup: active sessions past their idle deadline (which is never after the absolute one).
    await queryRunner.query(`CREATE INDEX "IDX_sessions_active_idle_expires" ON "sessions" ("idle_expires_at") WHERE "ended_at" IS NULL`);
    // Cleanup: ended sessions past retention.
    await queryRunner.query(`CREATE INDEX "IDX_sessions_ended_at" ON "sessions" ("ended_at") WHERE "ended_at" IS NOT NULL`);

    await queryRunner.query(`
      CREATE TABLE "rotated_refresh_tokens" (
        "token_hash" char(64) NOT NULL,
        "session_id" uuid NOT NULL,
        "rotated_at" timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT "PK_rotated_refresh_tokens" PRIMARY KEY ("token_hash"),
        CONSTRAINT "FK_rotated_refresh_tokens_session" FOREIGN KEY ("session_id") REFERENCES "sessions" ("id") ON DELETE CASCADE
      )`);
    await queryRunner.query(`CREATE INDEX "IDX_rotated_refresh_tokens_session" ON "rotated_refresh_tokens" ("session_id")`);

    await queryRunner.query(`
      CREATE TABLE "audit_events" (
        "id" uuid NOT NULL DEFAULT gen_random_uuid(),
        "seq" bigint GENERATED ALWAYS AS IDENTITY,
        "type" varchar(32) NOT NULL,
        "user_id" uuid,
        "session_id" uuid,
        "ip_address" varchar(64),
        "user_agent" varchar(512),
        "metadata" jsonb NOT NULL DEFAULT '{}'::jsonb,
        "created_at" timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT "PK_audit_events" PRIMARY KEY ("id"),
        CONSTRAINT "UQ_audit_events_seq" UNIQUE ("seq"),
        CONSTRAINT "FK_audit_events_user" FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE SET NULL
      )`);
    // A user's events newest first, optionally by type; sessions' events for investigations.
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_user_seq" ON "audit_events" ("user_id", "seq" DESC)`);
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_user_type_seq" ON "audit_events" ("user_id", "type", "seq" DESC)`);
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_created_at" ON "audit_events" ("created_at")`);
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_session" ON "audit_events" ("session_id")`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "audit_events"`);
    await queryRunner.query(`DROP TABLE "rotated_refresh_tokens"`);
    await queryRunner.query(`DROP TABLE "sessions"`);
    await queryRunner.query(`DROP TABLE "users"`);
  }
}
