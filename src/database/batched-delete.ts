import { EntityManager } from 'typeorm';
import { sql } from './sql';

/** Which rows to delete. Table, column and condition are the caller's own SQL, never input. */
export interface BatchedDelete {
  table: string;
  /**
   * An indexed column the batches walk upward: each batch is the next range of its index, so a
   * batch costs the same however many rows are left, and rows that match the index range but
   * not `where` (a counter still blocked) are passed once, not rescanned by every batch.
   */
  orderBy: string;
  /** The condition, with `$1`, `$2`, … taken from `params`. */
  where: string;
  params?: unknown[];
}

export interface BatchedDeleteLimits {
  batchSize: number;
  /** Stops starting batches after this many milliseconds; the next run goes on from the start. */
  budgetMs: number;
  /** Stops starting batches once aborted (at shutdown: the batch under way finishes). */
  stop?: AbortSignal;
}

/**
 * Deletes the rows matching `spec` in bounded batches, each one statement in its own
 * transaction, instead of one DELETE of everything: one statement over millions of rows holds
 * their locks to the end, writes all its WAL at once and, past the pool's statement timeout,
 * fails every time and never catches up. Each batch locks its rows with SKIP LOCKED, so
 * instances pruning at the same time split the rows instead of waiting on each other, and a
 * row a request holds is left for the next run. The locked rows are deleted by `ctid` (they
 * cannot move while locked) rather than found again through an index.
 */
export async function deleteInBatches(manager: EntityManager, spec: BatchedDelete, limits: BatchedDeleteLimits): Promise<number> {
  const params = spec.params ?? [];
  const position = `$${params.length + 1}`;
  const limit = `$${params.length + 2}`;
  const text = `WITH doomed AS MATERIALIZED (
      SELECT ctid, ${spec.orderBy} AS position FROM ${spec.table}
       WHERE (${spec.where}) AND ${spec.orderBy} >= ${position}
       ORDER BY ${spec.orderBy}
       LIMIT ${limit}
         FOR UPDATE SKIP LOCKED
    ), gone AS (
      DELETE FROM ${spec.table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM doomed)) RETURNING 1
    )
    SELECT (SELECT count(*) FROM doomed)::int AS found,
           (SELECT count(*) FROM gone)::int AS deleted,
           (SELECT max(position) FROM doomed)::text AS position`;
  const stopAt = Date.now() + limits.budgetMs;
  // As text, not a Date: a Date would drop the microseconds and the next batch would start
  // before the last row (harmless, but not exact).
  let from = '-infinity';
  let total = 0;
  // A run started after the stop (a tick the scheduler fired meanwhile) deletes nothing.
  if (limits.stop?.aborted) return total;
  for (;;) {
    const {
      rows: [batch],
    } = await sql<{ found: number; deleted: number; position: string | null }>(manager, text, [...params, from, limits.batchSize]);
    total += batch.deleted;
    if (batch.found < limits.batchSize || Date.now() >= stopAt || limits.stop?.aborted) return total;
    // Inclusive (>=): rows tied with the batch's last position but beyond its LIMIT come next.
    from = batch.position!;
  }
}
