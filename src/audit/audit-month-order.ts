import { Injectable } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource, EntityManager, QueryRunner } from 'typeorm';
import { PG_LOCK_NOT_AVAILABLE, pgErrorCode } from '../database/pg-errors';
import { refuseTruncateSql } from '../database/audit-truncate';
import { sql } from '../database/sql';
import type { AuditPartition } from './audit-partitions.service';

/** A month whose table holds its events in chain order carries this comment (it goes wherever the table goes). */
export const CHAIN_ORDER_COMMENT = 'sessionary: events in chain order';
/**
 * How long the swap waits for each of its locks (the month's, then audit_events') before giving
 * up until the next run. While it waits, the reads and writes that queue behind it wait too.
 */
const SWAP_LOCK_TIMEOUT_MS = 1000;
/** A leftover of a rewrite whose process stopped after the swap's commit, before the drop of the old table. */
const RETIRED_NAME = /^audit_events_y\d{4}m\d{2}_retired$/;

export type MonthOrderOutcome = { ordered: true; events: number; seconds: number } | { ordered: false; reason: string };

/**
 * Rewrites a closed month of audit_events with its events in chain order (chain_key, then
 * position), so that a user's events of the month lie on one or two heap pages instead of
 * one page each: in time order, the events of a user's month are scattered among everyone
 * else's, and a user's first page at 50M events read a heap page from disk for nearly every
 * event on it. A closed month no longer changes (each chain's times rise, so new events go to
 * the current month), so the order holds once made. The verifier, which reads the table in
 * the order its rows lie, then finds each chain's events one after the other.
 *
 * The month is copied, sorted, into a new table, which gets the month's indexes and replaces it
 * in one transaction (DETACH, ATTACH), as CLUSTER would but without holding the month locked for
 * the minutes the copy takes: the month is locked (SHARE: events can no longer enter it, reads
 * go on) only to check that the copy holds all of its events, and audit_events
 * (ACCESS EXCLUSIVE) only for the renames, the DETACH and the ATTACH that follow.
 *
 * The new table's rows are new row versions: a REPEATABLE READ snapshot taken before the swap
 * would find the month empty. The service's own long reads (verification, export) therefore
 * lock audit_events before their snapshot (startAuditSnapshot): the swap waits for them, and
 * they for it. Anyone else reading in one snapshot across a swap (a pg_dump started in the same
 * second, say) can see the month empty, as with any rewrite of a table (TRUNCATE, CLUSTER,
 * VACUUM FULL).
 */
@Injectable()
export class AuditMonthOrder {
  /** See SWAP_LOCK_TIMEOUT_MS (a field so that tests that act while the swap waits can lengthen it). */
  lockTimeoutMs = SWAP_LOCK_TIMEOUT_MS;

  constructor(@InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource) {}

  /** The months among `partitions` not yet in chain order. */
  async unordered(em: EntityManager, partitions: AuditPartition[]): Promise<AuditPartition[]> {
    if (partitions.length === 0) return [];
    const { rows } = await sql<{ name: string }>(
      em,
      `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass AND obj_description(c.oid, 'pg_class') = $1`,
      [CHAIN_ORDER_COMMENT],
    );
    const ordered = new Set(rows.map((r) => r.name));
    return partitions.filter((p) => !ordered.has(p.name));
  }

  /** Drops the old tables a rewrite left behind when its process stopped before dropping them. */
  async dropRetired(em: EntityManager): Promise<void> {
    const { rows } = await sql<{ name: string }>(
      em,
      `SELECT relname AS name FROM pg_class
        WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r' AND NOT relispartition AND relname LIKE 'audit\\_events\\_y%\\_retired'`,
    );
    for (const { name } of rows) if (RETIRED_NAME.test(name)) await sql(em, `DROP TABLE IF EXISTS "${name}"`);
  }

  /**
   * Rewrites one month in chain order on `runner` (outside a transaction; it runs its own).
   * Aborting `signal` cancels the statement under way (shutdown does not wait for a copy).
   */
  async order(runner: QueryRunner, partition: AuditPartition, signal: AbortSignal): Promise<MonthOrderOutcome> {
    if (signal.aborted) return { ordered: false, reason: 'the service is stopping' };
    const started = performance.now();
    const table = partition.name;
    const staging = `${table}_ordered`;
    const retired = `${table}_retired`;
    let cancel: (() => void) | undefined;
    let events: number;
    try {
      await runner.startTransaction();
      try {
        // The server process of this transaction (behind a pooler, the driver's would be the pooler's).
        const {
          rows: [{ pid }],
        } = await sql<{ pid: number }>(runner.manager, 'SELECT pg_backend_pid() AS pid');
        cancel = () => void this.dataSource.query('SELECT pg_cancel_backend($1)', [pid]).catch(() => undefined);
        signal.addEventListener('abort', cancel, { once: true });
        const outcome = await this.swapInOrdered(runner.manager, partition, staging, retired, signal);
        if (typeof outcome === 'string') {
          await runner.rollbackTransaction();
          return { ordered: false, reason: outcome };
        }
        await runner.commitTransaction();
        events = outcome;
      } catch (error) {
        if (runner.isTransactionActive) await runner.rollbackTransaction();
        if (signal.aborted) return { ordered: false, reason: 'the service is stopping' };
        if (pgErrorCode(error) === PG_LOCK_NOT_AVAILABLE) {
          return { ordered: false, reason: `a lock it needs was not granted within ${this.lockTimeoutMs} ms (a long read of the log under way?)` };
        }
        throw error;
      }
      // In a transaction of its own, as retention's drop: removing the files at COMMIT held the
      // lock on audit_events for most of a second at 4M events. Left behind, dropRetired drops it.
      try {
        await sql(runner.manager, `DROP TABLE IF EXISTS "${retired}"`);
        await this.freeze(runner, table);
      } catch (error) {
        // Cancelled by a shutdown: the month is rewritten; the next run drops what is left.
        if (!signal.aborted) throw error;
      }
    } finally {
      if (cancel) signal.removeEventListener('abort', cancel);
    }
    return { ordered: true, events, seconds: (performance.now() - started) / 1000 };
  }

  /**
   * Marks the month's pages all-visible and frozen, as it will stay: no reader sets hint bits
   * on them (the first verification would otherwise write the whole month back), and no
   * anti-wraparound VACUUM ever needs to read them again. Cancelled by a shutdown; autovacuum
   * does it later then.
   */
  private async freeze(runner: QueryRunner, table: string): Promise<void> {
    // VACUUM cannot run in a transaction, so no SET LOCAL: the connection goes back to the pool
    // with its own statement timeout (RESET returns to the connection's start-up value).
    await sql(runner.manager, `SET statement_timeout = 0`);
    try {
      await sql(runner.manager, `VACUUM (FREEZE) "${table}"`);
    } finally {
      await sql(runner.manager, `RESET statement_timeout`);
    }
  }

  /** A month's indexes, each with the index of audit_events it is attached to (null: none). */
  private async partitionIndexes(em: EntityManager, table: string): Promise<Array<{ name: string; parent: string | null }>> {
    const { rows } = await sql<{ name: string; parent: string | null }>(
      em,
      `SELECT c.relname AS name, p.inhparent::text AS parent FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         LEFT JOIN pg_inherits p ON p.inhrelid = i.indexrelid
        WHERE i.indrelid = $1::regclass ORDER BY c.relname`,
      [`"${table}"`],
    );
    return rows;
  }

  /**
   * The copy and the swap, in the caller's transaction: the number of events, or why the month
   * is left as it is (the caller rolls back).
   */
  private async swapInOrdered(
    em: EntityManager,
    partition: AuditPartition,
    staging: string,
    retired: string,
    signal: AbortSignal,
  ): Promise<number | string> {
    // A cancel that lands between two statements cancels neither: the long ones look first.
    const unlessStopping = (text: string) => {
      if (signal.aborted) throw new Error('stopping');
      return sql(em, text);
    };
    const table = partition.name;
    const from = partition.from.toISOString();
    const to = partition.to.toISOString();
    // Background work under the partitions job's lock: the pool's statement timeout is for requests.
    await sql(em, `SET LOCAL statement_timeout = 0`);
    // An event written before the chain and not yet sealed would get its chain fields by an
    // UPDATE after the copy; such a month waits for the sealing (at boot) to finish.
    const {
      rows: [{ unsealed }],
    } = await sql<{ unsealed: boolean }>(em, `SELECT EXISTS (SELECT 1 FROM "${table}" WHERE hash IS NULL) AS unsealed`);
    if (unsealed) return 'it holds events not yet sealed into their chains';

    const { rows: columnRows } = await sql<{ name: string }>(
      em,
      `SELECT attname AS name FROM pg_attribute WHERE attrelid = 'audit_events'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
    );
    const columns = columnRows.map((c) => `"${c.name}"`).join(', ');
    // (No INCLUDING COMPRESSION: PostgreSQL 13 lacks it, and no column sets its own.)
    // The bounds as a CHECK, so that ATTACH need not scan the table to prove them. The indexes
    // copied from audit_events' own (not from their text: a predicate read back from its text
    // can come out in another form, and ATTACH would then build the index again, under its lock).
    await sql(
      em,
      `CREATE TABLE "${staging}" (LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING INDEXES,
         CONSTRAINT "audit_events_month_bounds" CHECK (created_at >= '${from}' AND created_at < '${to}'))`,
    );
    // Plain ones are dropped while the rows go in and built once after, on sorted rows (faster,
    // and compact as after a REINDEX); partial ones stay, filled as the rows go in (their text
    // may not round-trip; the largest, a user's events by type, holds all but refreshes and expiries).
    const { rows: deferred } = await sql<{ drop: string; create: string }>(
      em,
      `SELECT CASE WHEN con.oid IS NULL THEN format('DROP INDEX %I', c.relname) ELSE format('ALTER TABLE %I DROP CONSTRAINT %I', $2::text, con.conname) END AS drop,
              CASE WHEN con.oid IS NULL THEN pg_get_indexdef(i.indexrelid) ELSE format('ALTER TABLE %I ADD CONSTRAINT %I %s', $2::text, con.conname, pg_get_constraintdef(con.oid)) END AS create
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
        WHERE i.indrelid = $1::regclass AND i.indpred IS NULL AND i.indexprs IS NULL`,
      [`"${staging}"`, staging],
    );
    for (const index of deferred) await sql(em, index.drop);
    const { count: copied } = await unlessStopping(
      `INSERT INTO "${staging}" (${columns}) SELECT ${columns} FROM "${table}" ORDER BY chain_key, chain_pos, seq`,
    );
    for (const index of deferred) await unlessStopping(index.create);
    await unlessStopping(`ANALYZE "${staging}"`);

    await sql(em, `SET LOCAL lock_timeout = ${Math.trunc(this.lockTimeoutMs)}`);
    // From here no event enters the month (it is closed: one would come from a clock far
    // behind), and the count tells whether one did while it was copied.
    await sql(em, `LOCK TABLE "${table}" IN SHARE MODE`);
    const {
      rows: [{ events }],
    } = await sql<{ events: number }>(em, `SELECT count(*)::float8 AS events FROM "${table}"`);
    if (events !== copied) return 'events were written into it while it was copied; the next run copies it again';
    // audit_events before the month, in the order every reader takes them (the table, then its
    // months): locking the month first would make a reader that holds audit_events and waits for
    // the month, and this swap waiting for audit_events, a deadlock. Every read and write of
    // the log waits from here to the COMMIT.
    await sql(em, `LOCK TABLE ONLY audit_events IN ACCESS EXCLUSIVE MODE`);

    // The month's index names go to the new table's indexes, matched through the index of
    // audit_events each is attached to.
    const oldIndexes = await this.partitionIndexes(em, table);
    await sql(em, `ALTER TABLE "${table}" RENAME TO "${retired}"`);
    for (const [i, index] of oldIndexes.entries()) await sql(em, `ALTER INDEX "${index.name}" RENAME TO "${retired}_${i}"`);
    await sql(em, `ALTER TABLE audit_events DETACH PARTITION "${retired}"`);
    await sql(em, `ALTER TABLE "${staging}" RENAME TO "${table}"`);
    // LIKE copies no trigger: the month's own refusal of TRUNCATE (the row triggers come with ATTACH).
    await sql(em, refuseTruncateSql(table));
    await sql(em, `ALTER TABLE audit_events ATTACH PARTITION "${table}" FOR VALUES FROM ('${from}') TO ('${to}')`);
    const newIndexes = await this.partitionIndexes(em, table);
    // ATTACH builds any index it finds no match for: then it did so under the lock, and the
    // prepared one would be left over. Never expected (the indexes are copies); refused if so.
    if (newIndexes.length !== oldIndexes.length || newIndexes.some((n) => !n.parent)) {
      throw new Error(`The rewritten ${table} did not match the indexes of audit_events: ${JSON.stringify(newIndexes)}`);
    }
    const oldNames = new Map(oldIndexes.map((o) => [o.parent, o.name]));
    for (const index of newIndexes) {
      const name = oldNames.get(index.parent);
      if (name && name !== index.name) await sql(em, `ALTER INDEX "${index.name}" RENAME TO "${name}"`);
    }
    await sql(em, `ALTER TABLE "${table}" DROP CONSTRAINT "audit_events_month_bounds"`);
    await sql(em, `COMMENT ON TABLE "${table}" IS '${CHAIN_ORDER_COMMENT}'`);
    return copied;
  }
}
