import { MigrationInterface, QueryRunner } from 'typeorm';

/** The columns of audit_events, in the order both tables below declare them. */
const COLUMNS = `"id", "seq", "type", "user_id", "session_id", "ip_address", "user_agent", "metadata", "created_at", "chain_key", "chain_pos", "prev_hash", "hash"`;

const COLUMN_DEFINITIONS = `
  "id" uuid NOT NULL DEFAULT gen_random_uuid(),
  "seq" bigint GENERATED ALWAYS AS IDENTITY,
  "type" varchar(32) NOT NULL,
  "user_id" uuid,
  "session_id" uuid,
  "ip_address" varchar(64),
  "user_agent" varchar(512),
  "metadata" jsonb NOT NULL DEFAULT '{}'::jsonb,
  "created_at" timestamptz NOT NULL DEFAULT now(),
  "chain_key" varchar(40) COLLATE "C",
  "chain_pos" bigint,
  "prev_hash" char(64),
  "hash" char(64),
  CONSTRAINT "CHK_audit_events_chain" CHECK (
    ("chain_key" IS NULL AND "chain_pos" IS NULL AND "prev_hash" IS NULL AND "hash" IS NULL)
    OR ("chain_key" IS NOT NULL AND "chain_pos" >= 1 AND "prev_hash" IS NOT NULL AND "hash" IS NOT NULL)),
  CONSTRAINT "FK_audit_events_user" FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE SET NULL`;

/** The indexes of every filter path, as before the partitions (the unique ones aside; see below). */
async function createIndexes(queryRunner: QueryRunner): Promise<void> {
  await queryRunner.query(`CREATE INDEX "IDX_audit_events_user_seq" ON "audit_events" ("user_id", "seq" DESC)`);
  await queryRunner.query(`CREATE INDEX "IDX_audit_events_user_type_seq" ON "audit_events" ("user_id", "type", "seq" DESC)`);
  await queryRunner.query(`CREATE INDEX "IDX_audit_events_type_seq" ON "audit_events" ("type", "seq" DESC)`);
  await queryRunner.query(`CREATE INDEX "IDX_audit_events_created_at" ON "audit_events" ("created_at")`);
  await queryRunner.query(`CREATE INDEX "IDX_audit_events_session" ON "audit_events" ("session_id")`);
  await queryRunner.query(`CREATE INDEX "IDX_audit_events_unsealed" ON "audit_events" ("seq") WHERE "hash" IS NULL`);
}

/**
 * audit_events becomes a table partitioned by month of created_at (UTC), so that retention
 * drops a whole month instead of deleting rows (AuditPartitionsService). Every existing row is
 * copied with its seq and chain fields unchanged, so the chain stays valid; the partitions
 * from the oldest event's month to two months ahead are created here, later ones by the service.
 *
 * A unique index of a partitioned table must include the partition key, so `id`'s primary key
 * becomes (id, created_at), and the chain's (chain_key, chain_pos) index is no longer unique:
 * the head's row lock still serialises each chain's writers, and the verifier reports a fork
 * (two events at one position) as a broken chain. `seq` stays unique by its identity.
 *
 * audit_chain_heads gains each chain's base: the position and hash of its last event in a
 * dropped month, with their MAC, where verification of the chain starts.
 *
 * The copy holds audit_events locked until it commits: logins and every other audited change
 * wait meanwhile. On a large log, migrate in a quiet hour (measured in the README).
 */
export class AuditPartitions1765100000000 implements MigrationInterface {
  name = 'AuditPartitions1765100000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    // The copy is one statement over the whole log: the pool's statement_timeout (15 s) is for
    // requests, not for this. For this transaction only (migrations run one transaction each).
    await queryRunner.query(`SET LOCAL statement_timeout = 0`);
    await queryRunner.query(`ALTER TABLE "audit_events" RENAME TO "audit_events_unpartitioned"`);
    await queryRunner.query(`ALTER TABLE "audit_events_unpartitioned" RENAME CONSTRAINT "PK_audit_events" TO "PK_audit_events_unpartitioned"`);
    await queryRunner.query(`
      CREATE TABLE "audit_events" (${COLUMN_DEFINITIONS},
        CONSTRAINT "PK_audit_events" PRIMARY KEY ("id", "created_at")
      ) PARTITION BY RANGE ("created_at")`);
    await queryRunner.query(`
      DO $$
      DECLARE
        month timestamptz := date_trunc('month', coalesce((SELECT min("created_at") FROM "audit_events_unpartitioned"), now()) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
        last timestamptz := (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months') AT TIME ZONE 'UTC';
      BEGIN
        WHILE month <= last LOOP
          EXECUTE format('CREATE TABLE %I PARTITION OF "audit_events" FOR VALUES FROM (%L) TO (%L)',
            'audit_events_' || to_char(month AT TIME ZONE 'UTC', '"y"YYYY"m"MM'), month, (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC');
          month := (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
        END LOOP;
      END $$`);
    await queryRunner.query(`INSERT INTO "audit_events" (${COLUMNS}) OVERRIDING SYSTEM VALUE SELECT ${COLUMNS} FROM "audit_events_unpartitioned"`);
    await queryRunner.query(`SELECT setval(pg_get_serial_sequence('"audit_events"', 'seq'), coalesce(max("seq"), 0) + 1, false) FROM "audit_events"`);
    await queryRunner.query(`DROP TABLE "audit_events_unpartitioned"`);
    await createIndexes(queryRunner);
    // seq's unique constraint (keyset pages) and the chain's unique index, without uniqueness.
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_seq" ON "audit_events" ("seq")`);
    await queryRunner.query(`CREATE INDEX "IDX_audit_events_chain" ON "audit_events" ("chain_key", "chain_pos")`);
    await queryRunner.query(`
      ALTER TABLE "audit_chain_heads"
        ADD COLUMN "base_position" bigint,
        ADD COLUMN "base_hash" char(64),
        ADD COLUMN "base_mac" char(64)`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`SET LOCAL statement_timeout = 0`);
    await queryRunner.query(`ALTER TABLE "audit_chain_heads" DROP COLUMN "base_mac", DROP COLUMN "base_hash", DROP COLUMN "base_position"`);
    await queryRunner.query(`ALTER TABLE "audit_events" RENAME TO "audit_events_partitioned"`);
    await queryRunner.query(`ALTER TABLE "audit_events_partitioned" RENAME CONSTRAINT "PK_audit_events" TO "PK_audit_events_partitioned"`);
    await queryRunner.query(`
      CREATE TABLE "audit_events" (${COLUMN_DEFINITIONS},
        CONSTRAINT "PK_audit_events" PRIMARY KEY ("id"),
        CONSTRAINT "UQ_audit_events_seq" UNIQUE ("seq")
      )`);
    await queryRunner.query(`INSERT INTO "audit_events" (${COLUMNS}) OVERRIDING SYSTEM VALUE SELECT ${COLUMNS} FROM "audit_events_partitioned"`);
    await queryRunner.query(`SELECT setval(pg_get_serial_sequence('"audit_events"', 'seq'), coalesce(max("seq"), 0) + 1, false) FROM "audit_events"`);
    await queryRunner.query(`DROP TABLE "audit_events_partitioned"`);
    await createIndexes(queryRunner);
    await queryRunner.query(`CREATE UNIQUE INDEX "UQ_audit_events_chain" ON "audit_events" ("chain_key", "chain_pos")`);
  }
}
