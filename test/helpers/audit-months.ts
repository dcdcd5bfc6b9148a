import { refuseTruncateSql } from '../../src/database/audit-truncate';
import assert from 'node:assert/strict';
import { DataSource, EntityManager, QueryRunner } from 'typeorm';
import { AuditChainService } from '../../src/audit/audit-chain.service';
import { partitionOf } from '../../src/audit/audit-partitions.service';
import { tamper } from './db';
import type { TestApp } from './test-app';

/** The first day of the month `monthsBack` months before the current one (UTC). */
export function monthStart(monthsBack: number): Date {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - monthsBack, 1));
}

/** Events by partition. */
export async function partitionsOf(db: DataSource): Promise<Record<string, number>> {
  const rows: Array<{ partition: string; n: number }> = await db.query(
    `SELECT tableoid::regclass::text AS partition, count(*)::int AS n FROM audit_events GROUP BY 1 ORDER BY 1`,
  );
  return Object.fromEntries(rows.map((r) => [r.partition, r.n]));
}

/** A user with no events (straight into the table), so that its chain can start in the past. */
export async function silentUser(db: DataSource, name: string): Promise<string> {
  const [{ id }] = await db.query(`INSERT INTO users (username, email, password_hash) VALUES ($1, $2, 'x') RETURNING id`, [
    name,
    `${name}@example.com`,
  ]);
  return id;
}

/**
 * Events dated in a past month, chained as the service chains them: written without the chain
 * and sealed (the path events from before the chain take), which appends them to their chains.
 */
export async function pastEvents(t: TestApp, month: Date, rows: Array<{ userId: string | null; type: string }>): Promise<void> {
  const partition = partitionOf(month);
  await t.db.query(
    `CREATE TABLE IF NOT EXISTS "${partition.name}" PARTITION OF audit_events FOR VALUES FROM ('${partition.from.toISOString()}') TO ('${partition.to.toISOString()}')`,
  );
  await t.db.query(refuseTruncateSql(partition.name)); // as every month the service makes
  for (const [i, r] of rows.entries()) {
    await t.db.query(`INSERT INTO audit_events (type, user_id, created_at, metadata) VALUES ($1, $2, $3, '{"past":true}')`, [
      r.type,
      r.userId,
      new Date(month.getTime() + (i + 1) * 3_600_000),
    ]);
  }
  // The bound a migration to the chain leaves (the table refuses it since 0.23.0).
  await tamper(t.db, `INSERT INTO audit_chain_seal SELECT max(seq) FROM audit_events`);
  // Sealed batch by batch as sealPending seals them, which itself refuses to once the log has a
  // checkpoint (these tests may have written some): then unchained rows can only be forged.
  const chain = t.app.get(AuditChainService) as unknown as { sealBatch(em: EntityManager): Promise<number> };
  let sealed = 0;
  for (;;) {
    const batch = await t.db.transaction((em) => chain.sealBatch(em));
    if (!batch) break;
    sealed += batch;
  }
  assert.equal(sealed, rows.length);
}

/**
 * An event dated in `month` and sealed into its chain inside a transaction left open: it has
 * its seq (taken by the INSERT) but is not committed, like a writer that commits late. The
 * caller commits or rolls back the returned runner.
 */
export async function uncommittedPastEvent(t: TestApp, month: Date, userId: string): Promise<QueryRunner> {
  const runner = t.db.createQueryRunner();
  await runner.connect();
  await runner.startTransaction();
  await runner.query(`INSERT INTO audit_events (type, user_id, created_at, metadata) VALUES ('LOGIN', $1, $2, '{"late":true}')`, [
    userId,
    new Date(month.getTime() + 10 * 3_600_000),
  ]);
  // The migration's bound, past the table's trigger (as tamper() goes past it) and then back.
  await runner.query(`SET LOCAL session_replication_role = replica`);
  await runner.query(`INSERT INTO audit_chain_seal SELECT max(seq) FROM audit_events`);
  await runner.query(`SET LOCAL session_replication_role = origin`);
  const chain = t.app.get(AuditChainService) as unknown as { sealBatch(em: EntityManager): Promise<number> };
  assert.equal(await chain.sealBatch(runner.manager), 1);
  return runner;
}
