import { Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DataSource, EntityManager, QueryRunner } from 'typeorm';
import type { AppConfig } from '../config/config';
import { AUDIT_NO_TRUNCATE_TRIGGER, refuseTruncateSql } from '../database/audit-truncate';
import { PG_LOCK_NOT_AVAILABLE, pgErrorCode } from '../database/pg-errors';
import { sql } from '../database/sql';
import { makeDirectoryDurably, publishFileDurably, sweepStalePartials } from '../common/durable-file';
import { RetryAfterException } from '../common/retry-after.exception';
import { LOCK_TAKEN, withSessionAdvisoryLock } from '../database/advisory-lock';
import { AuditBaseSets, type BaseSet } from './audit-base-sets';
import { AuditChainService } from './audit-chain.service';
import { AuditExportService } from './audit-export.service';
import { AuditMonthOrder } from './audit-month-order';
import { AuditShipDestinations } from './audit-ship-destinations';
import { settledAuditSeq } from './settled-seq';

// Any fixed 64-bit number works; this one spells "audparts" in ASCII.
const PARTITIONS_LOCK_KEY = '7022356976209572979';
/** Months created ahead of the current one, so an insert never lacks its partition. */
const MONTHS_AHEAD = 2;
/** A month's base set is prepared this long before the month is due for its drop, ... */
const PREPARE_AHEAD_MS = 86_400_000;
/** ... and no sooner than this after the month ended (an event dated just before its end may still be committing). */
const CLOSED_AFTER_MS = 3_600_000;
/** How long dropping a month may wait for the table lock (DETACH takes it briefly) before trying again next run. */
const LOCK_TIMEOUT = '5s';
/** Why a month is held when that wait ran out (SQLSTATE 55P03). */
const BUSY_REASON = `audit_events or the month was busy: a lock its drop takes was not granted within ${LOCK_TIMEOUT} (a long read such as an export, a verification or pg_dump, or a writer of the month); trying again next run`;
/** Why a month is held when its archive could not have an export slot (the export's 429). */
const NO_EXPORT_SLOT_REASON =
  'every audit export slot of this instance (AUDIT_EXPORT_MAX_CONCURRENT) was taken, so it could not be archived; trying again next run';
/** Why a month is held when no checkpoint covers its last event yet (its archive would have none to close it). */
const NO_CLOSING_CHECKPOINT_REASON =
  "no checkpoint covers the month's last event yet (another instance was writing one, or a transaction held the settling up), so its archive would have none to close it; trying again next run";
/** How long giving a month its refusal of TRUNCATE may wait for the month's writers. */
const TRIGGER_LOCK_TIMEOUT = '200ms';
/**
 * How long creating a month ahead may wait for audit_events: CREATE TABLE … PARTITION OF locks
 * the parent exclusively, so it waits behind a long read (an export, a verification, pg_dump)
 * and every audited write (each login, refresh, logout) queues behind it meanwhile. A month
 * ahead can wait for the next run; the month under way cannot.
 */
const CREATE_AHEAD_LOCK_TIMEOUT = '200ms';
/**
 * How long preparing a month's bases waits for the transactions holding a seq when it starts to
 * end (settledAuditSeq); past it, the set is prepared without a settled seq and its drop
 * counts the whole month.
 */
const SETTLE_TIMEOUT_MS = 30_000;

const PARTITION_NAME = /^audit_events_y(\d{4})m(\d{2})$/;

/** One month's partition, named after its month (UTC). */
export interface AuditPartition {
  name: string;
  from: Date;
  to: Date;
}

export interface MaintenanceResult {
  /** Another instance held the lock. */
  skipped: boolean;
  created: string[];
  /**
   * detachMs: the transaction that DETACHes the month (audited writes wait from its DETACH to its COMMIT);
   * removeMs: the DROP TABLE of its files after it, which locks nothing but the detached table and
   * takes what the file system takes (ext4's online discard: about half a second per GiB).
   */
  dropped: Array<{ name: string; events: number; archive: string | null; detachMs: number; removeMs: number }>;
  /** A month past retention that could not be dropped (and why); the next run tries again. */
  held: Array<{ name: string; reason: string }>;
  /** The closed month rewritten in chain order (AuditMonthOrder) by this run: one a run, newest first. */
  ordered: Array<{ name: string; events: number; seconds: number }>;
  /** A closed month that could not be rewritten in chain order (and why); the next run tries again. */
  orderHeld: Array<{ name: string; reason: string }>;
}

/** A partition's month as its base set names it: its first day, `YYYY-MM-DD`. */
export function monthOf(partition: AuditPartition): string {
  return partition.from.toISOString().slice(0, 10);
}

export function partitionOf(month: Date): AuditPartition {
  const from = new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth(), 1));
  const to = new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth() + 1, 1));
  const name = `audit_events_y${from.getUTCFullYear()}m${String(from.getUTCMonth() + 1).padStart(2, '0')}`;
  return { name, from, to };
}

/**
 * The partitions of audit_events (one per month of created_at, UTC): creates them ahead of
 * time, and, when AUDIT_RETENTION_DAYS is set, drops each month once all of it is past
 * retention, after archiving it to AUDIT_ARCHIVE_DIR when set. A drop is one DETACH and one
 * DROP, no matter how many rows: no DELETE storm, no bloat, no long locks.
 *
 * Dropping the oldest events of a chain would break its verification, so each chain's last
 * event up to the month's end becomes its base: the month's base set (AuditBaseSets), prepared
 * a day before the month is due, so that the drop itself only checks that the month did not
 * change since. The verifier starts each chain at the base set of the newest dropped month.
 * Each chain's times rise with its positions, so a month holds a whole stretch of every chain;
 * a month for which that does not hold (a clock stepped back) is held, not dropped.
 */
@Injectable()
export class AuditPartitionsService {
  private readonly logger = new Logger(AuditPartitionsService.name);
  /** For /metrics. */
  readonly stats = {
    lastRunAt: null as Date | null,
    droppedEvents: 0,
    droppedPartitions: 0,
    partitions: 0,
    closedMonthsInTimeOrder: 0,
    /** Months past AUDIT_RETENTION_DAYS kept at the last run, each for a reason the log gives. */
    heldPastRetention: 0,
  };
  /** See SETTLE_TIMEOUT_MS (a field so that tests can shorten it). */
  settleTimeoutMs = SETTLE_TIMEOUT_MS;
  /** Aborted at shutdown: a preparation stops waiting for older transactions, a month's rewrite stops (see stopWaiting). */
  private readonly stopping = new AbortController();

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly chain: AuditChainService,
    private readonly exporter: AuditExportService,
    private readonly bases: AuditBaseSets,
    private readonly monthOrder: AuditMonthOrder,
    private readonly shipping: AuditShipDestinations,
    private readonly config: ConfigService<AppConfig, true>,
  ) {}

  /**
   * Ends a settle wait under way at once (the set is then prepared unsettled, and its drop
   * counts the month), so that a shutdown, which waits for the run, is not held up to
   * SETTLE_TIMEOUT_MS by someone else's long transaction; and cancels a month's rewrite in
   * chain order under way (minutes at millions of events; the next run starts it again).
   */
  stopWaiting(): void {
    this.stopping.abort();
  }

  /** The managed partitions, oldest first. */
  async list(em: EntityManager = this.dataSource.manager): Promise<AuditPartition[]> {
    const { rows } = await sql<{ name: string }>(
      em,
      `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass`,
    );
    return rows
      .map((r) => PARTITION_NAME.exec(r.name))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => partitionOf(new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, 1))))
      .sort((a, b) => a.from.getTime() - b.from.getTime());
  }

  /**
   * Creates the months ahead and applies retention, one instance at a time (advisory lock;
   * the others skip). Every step can run again safely.
   */
  async maintain(): Promise<MaintenanceResult> {
    const result: MaintenanceResult = { skipped: false, created: [], dropped: [], held: [], ordered: [], orderHeld: [] };
    const ran = await this.locked(async (runner, now) => {
      result.created = await this.createAhead(runner, now);
      const days = this.config.get('AUDIT_RETENTION_DAYS', { infer: true });
      const cutoff = days === undefined ? undefined : new Date(now.getTime() - days * 86_400_000);
      // No date at all compares false with every month's end, which would make each one look
      // expired: never drop on it (configuration refuses such a value; this is the last guard).
      if (cutoff && Number.isNaN(cutoff.getTime())) throw new Error(`AUDIT_RETENTION_DAYS (${days}) gives no cutoff date; nothing is dropped`);
      let pastRetention = 0;
      if (cutoff) {
        await this.dropDetachedMonths(runner);
        const unprepared = await this.prepareBases(runner, now, cutoff);
        pastRetention = await this.applyRetention(runner, cutoff, unprepared, result);
      }
      await this.orderClosedMonths(runner, now, cutoff, result);
      this.stats.partitions = (await this.list(runner.manager)).length;
      this.stats.heldPastRetention = pastRetention;
      this.stats.lastRunAt = new Date();
    });
    if (!ran) return { ...result, skipped: true };
    // Drops and held months are logged as they happen (dropMonth, applyRetention): a run that
    // fails later must not lose the line of a month it already dropped.
    for (const o of result.ordered) this.logger.log({ event: 'audit.partition_ordered', partition: o.name, events: o.events, seconds: o.seconds });
    for (const h of result.orderHeld) this.logger.log(`Audit partition ${h.name} is left in time order for now: ${h.reason}`);
    return result;
  }

  /**
   * Only the months ahead (for a process that runs no scheduled job but writes events: the CLI).
   * Skipped when another process holds the lock: its run creates them first.
   */
  async createMonthsAhead(): Promise<string[]> {
    let created: string[] = [];
    await this.locked(async (runner, now) => {
      created = await this.createAhead(runner, now);
    });
    return created;
  }

  /** Runs `work` under the partitions' advisory lock, with the database's time; false if another process holds it. */
  private async locked(work: (runner: QueryRunner, now: Date) => Promise<void>): Promise<boolean> {
    const done = await withSessionAdvisoryLock(this.dataSource, PARTITIONS_LOCK_KEY, async (runner) => {
      const {
        rows: [{ now }],
      } = await sql<{ now: Date }>(runner.manager, 'SELECT now() AS now');
      await work(runner, now);
    });
    return done !== LOCK_TAKEN;
  }

  /**
   * With AUDIT_ORDER_CLOSED_MONTHS, rewrites one closed month still in time order in chain order
   * (AuditMonthOrder): the newest (the months users read most), one a run, so that after an
   * upgrade the months of a large log are rewritten an hour apart, not all in the first run's
   * I/O. A month is closed CLOSED_AFTER_MS after its end, as for its base set; a month due for
   * retention within PREPARE_AHEAD_MS is left as it is (it is about to go). Counts the closed
   * months left in time order either way (for /metrics).
   */
  private async orderClosedMonths(runner: QueryRunner, now: Date, cutoff: Date | undefined, result: MaintenanceResult): Promise<void> {
    await this.monthOrder.dropRetired(runner.manager);
    const closed = (await this.list(runner.manager)).filter(
      (p) => p.to.getTime() <= now.getTime() - CLOSED_AFTER_MS && (!cutoff || p.to.getTime() > cutoff.getTime() + PREPARE_AHEAD_MS),
    );
    const inTimeOrder = await this.monthOrder.unordered(runner.manager, closed);
    const partition = inTimeOrder.at(-1);
    if (partition && this.config.get('AUDIT_ORDER_CLOSED_MONTHS', { infer: true })) {
      const outcome = await this.monthOrder.order(runner, partition, this.stopping.signal);
      if (outcome.ordered) {
        result.ordered.push({ name: partition.name, events: outcome.events, seconds: outcome.seconds });
        inTimeOrder.pop();
      } else {
        result.orderHeld.push({ name: partition.name, reason: outcome.reason });
      }
    }
    this.stats.closedMonthsInTimeOrder = inTimeOrder.length;
  }

  private async createAhead(runner: QueryRunner, now: Date): Promise<string[]> {
    const existing = new Set((await this.list(runner.manager)).map((p) => p.name));
    const created: string[] = [];
    for (let ahead = 0; ahead <= MONTHS_AHEAD; ahead++) {
      const partition = partitionOf(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + ahead, 1)));
      if (existing.has(partition.name)) continue;
      const neededNow = ahead === 0;
      await runner.startTransaction();
      try {
        if (!neededNow) await sql(runner.manager, `SET LOCAL lock_timeout = '${CREATE_AHEAD_LOCK_TIMEOUT}'`);
        // IF NOT EXISTS: a partition created by the migration or another version is left as it is.
        await sql(
          runner.manager,
          `CREATE TABLE IF NOT EXISTS "${partition.name}" PARTITION OF audit_events
             FOR VALUES FROM ('${partition.from.toISOString()}') TO ('${partition.to.toISOString()}')`,
        );
        await runner.commitTransaction();
        created.push(partition.name);
      } catch (error) {
        if (runner.isTransactionActive) await runner.rollbackTransaction();
        if (neededNow || pgErrorCode(error) !== PG_LOCK_NOT_AVAILABLE) throw error;
        // Months are made two ahead: the next run (an hour later) has a month of slack.
        this.logger.warn(
          `Audit partition ${partition.name} was not created ahead: audit_events was busy (a long read holds it); a later run creates it`,
        );
      }
    }
    // A statement trigger is not cloned to a new partition: each month refuses TRUNCATE itself.
    // Every month without the trigger gets it, not only those made here: a month made by an
    // instance of a version before it (a rolling upgrade) is then covered within the hour.
    const { rows: unguarded } = await sql<{ name: string }>(
      runner.manager,
      `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = $1)`,
      [AUDIT_NO_TRUNCATE_TRIGGER],
    );
    for (const { name } of unguarded) {
      // CREATE TRIGGER waits for the month's writers, and new ones would queue behind it: a
      // short wait at most, or the next run does it.
      await runner.startTransaction();
      try {
        await sql(runner.manager, `SET LOCAL lock_timeout = '${TRIGGER_LOCK_TIMEOUT}'`);
        await sql(runner.manager, refuseTruncateSql(name));
        await runner.commitTransaction();
      } catch (error) {
        if (runner.isTransactionActive) await runner.rollbackTransaction();
        // Never the run's end: retention and the rest of it go on; the next run tries again.
        const why = pgErrorCode(error) === PG_LOCK_NOT_AVAILABLE ? 'it was busy' : error instanceof Error ? error.message : String(error);
        this.logger.warn(`${name} did not get its refusal of TRUNCATE (${why}); a later run gives it`);
      }
    }
    return created;
  }

  /**
   * Prepares the base sets of the months due within PREPARE_AHEAD_MS (and over for
   * CLOSED_AFTER_MS at least), oldest first, so that their drops find them ready. Each set
   * builds on the one before, so a month that cannot be prepared stops the run: its reason,
   * by month, for its drop to report once it is due.
   */
  private async prepareBases(runner: QueryRunner, now: Date, cutoff: Date): Promise<Map<string, string>> {
    const horizon = Math.min(now.getTime() - CLOSED_AFTER_MS, cutoff.getTime() + PREPARE_AHEAD_MS);
    const prepared = new Set((await this.bases.list(runner.manager)).map((s) => s.month));
    for (const partition of await this.list(runner.manager)) {
      if (partition.to.getTime() > horizon) break;
      const month = monthOf(partition);
      if (prepared.has(month)) continue;
      const set = await this.prepareMonth(runner, partition);
      if (typeof set === 'string') return new Map([[month, set]]);
    }
    return new Map();
  }

  /** Prepares one month's base set in its own transaction: the set, or why not. */
  private async prepareMonth(runner: QueryRunner, partition: AuditPartition): Promise<BaseSet | string> {
    const month = monthOf(partition);
    // Before the transaction (whose snapshot must come after it), so that the drop can check
    // the month by the events above it instead of counting all of them.
    const settledSeq = await settledAuditSeq(runner.manager, this.settleTimeoutMs, this.stopping.signal);
    // One snapshot for the set, its counts and the events above the settled seq.
    await runner.startTransaction('REPEATABLE READ');
    try {
      // Background work under the job's lock, holding no lock the service's writes need: no
      // statement timeout (at 1M chains the set's INSERT alone took 4.5 s; the pool's limit is 15 s).
      await sql(runner.manager, `SET LOCAL statement_timeout = 0`);
      const previous = (await this.bases.list(runner.manager)).filter((s) => s.month < month).pop();
      const set = await this.bases.prepare(runner.manager, { month, table: `"${partition.name}"`, to: partition.to }, previous, settledSeq);
      if (typeof set === 'string') await runner.rollbackTransaction();
      else await runner.commitTransaction();
      return set;
    } catch (error) {
      await runner.rollbackTransaction();
      throw error;
    }
  }

  /**
   * Drops what dropMonth leaves when its process stops after the DETACH's commit: the base
   * sets superseded by the dropped month's, and the month's table (named like a month's
   * partition, no longer one, of a month no later than the newest dropped one; months are
   * dropped oldest first).
   */
  private async dropDetachedMonths(runner: QueryRunner): Promise<void> {
    const newestDropped = (await this.bases.inForce(runner.manager))?.month;
    if (!newestDropped) return;
    await this.discardSupersededSets(runner);
    const { rows } = await sql<{ name: string }>(
      runner.manager,
      `SELECT relname AS name FROM pg_class
        WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r' AND NOT relispartition AND relname LIKE 'audit\\_events\\_y%'`,
    );
    for (const { name } of rows) {
      const match = PARTITION_NAME.exec(name);
      if (match && `${match[1]}-${match[2]}-01` <= newestDropped) await sql(runner.manager, `DROP TABLE IF EXISTS "${name}"`);
    }
  }

  /**
   * Drops the months past the cutoff, oldest first, up to the first that cannot go (held, with
   * why). Returns how many months past the cutoff are left: the held one and every one behind
   * it (for /metrics: a count of months, so that an alert sees a backlog, not only that one is held).
   */
  private async applyRetention(runner: QueryRunner, cutoff: Date, unprepared: Map<string, string>, result: MaintenanceResult): Promise<number> {
    for (const partition of await this.list(runner.manager)) {
      if (partition.to > cutoff) break;
      const reason = unprepared.get(monthOf(partition)) ?? (await this.dropMonth(runner, partition, result));
      if (reason) {
        // Months are dropped oldest first: a later one would leave a gap in the chains.
        result.held.push({ name: partition.name, reason });
        break;
      }
    }
    const left = (await this.list(runner.manager)).filter((p) => p.to <= cutoff).length;
    for (const h of result.held) {
      const behind = left > 1 ? `; ${left - 1} later month(s) past retention wait behind it (months are dropped oldest first)` : '';
      this.logger.warn(`Audit partition ${h.name} is past retention but kept: ${h.reason}${behind}`);
    }
    return left;
  }

  /**
   * Archives (when configured) and drops one month; returns why not when it cannot. Its base
   * set is ready (prepareBases); one discarded since (the month changed) is prepared again.
   * Waits that run out (a lock, an export slot) hold the month for the next run, as anything
   * that says the month cannot go yet; they do not end the run, which still has the drops
   * before it to report and its other work to do.
   */
  private async dropMonth(runner: QueryRunner, partition: AuditPartition, result: MaintenanceResult): Promise<string | undefined> {
    const month = monthOf(partition);
    let set = (await this.bases.list(runner.manager)).find((s) => s.month === month);
    if (!set) {
      const prepared = await this.prepareMonth(runner, partition);
      if (typeof prepared === 'string') return prepared;
      set = prepared;
    }

    // Not before every destination the log is shipped to has the month's events: dropping them
    // would delete events that no other system ever got.
    if (this.shipping.list.length) {
      const {
        rows: [{ last }],
      } = await sql<{ last: string | null }>(runner.manager, `SELECT max(seq)::text AS last FROM "${partition.name}"`);
      const unshipped = last === null ? undefined : await this.shipping.notShippedThrough(runner, last);
      if (unshipped) return unshipped;
    }

    let archive: string | null = null;
    if (this.config.get('AUDIT_ARCHIVE_DIR', { infer: true })) {
      // A checkpoint of everything up to now closes the archive: one that covers the month's
      // last event (checkpoint() writes none while another instance writes one, and one that
      // claims no more than the last when a transaction holds the settling up; until 0.24.0
      // the archive was then closed by an older checkpoint, which its events outran).
      await this.chain.checkpoint(true);
      const {
        rows: [{ last }],
      } = await sql<{ last: string | null }>(runner.manager, `SELECT max(seq)::text AS last FROM "${partition.name}"`);
      const closing = await this.chain.latestCheckpoint();
      if (last !== null && (!closing || BigInt(closing.maxSeq) < BigInt(last))) return NO_CLOSING_CHECKPOINT_REASON;
      try {
        archive = await this.archive(runner, partition);
      } catch (error) {
        // The export's own refusal: this instance's export slots are all streaming (to admins, to shipping).
        if (error instanceof RetryAfterException) return NO_EXPORT_SLOT_REASON;
        throw error;
      }
    }

    const detachStarted = performance.now();
    const detached = await this.detach(runner, partition, set);
    if (detached) return detached;
    const drop = { name: partition.name, events: set.events, archive, detachMs: Math.round(performance.now() - detachStarted), removeMs: 0 };
    // Counted as soon as the DETACH committed: the month is gone from the log whatever happens next.
    this.stats.droppedEvents += set.events;
    this.stats.droppedPartitions++;
    result.dropped.push(drop);
    let removed = false;
    try {
      drop.removeMs = await this.dropDetachedTable(runner, partition);
      removed = true;
      await this.discardSupersededSets(runner);
    } finally {
      this.logger.log({
        event: 'audit.partition_dropped',
        partition: drop.name,
        events: drop.events,
        archive: drop.archive,
        detachMs: drop.detachMs,
        // null: its table could not be dropped now; the next run drops it (dropDetachedMonths).
        removeMs: removed ? drop.removeMs : null,
      });
    }
    return undefined;
  }

  /**
   * In one transaction: locks the month against writes, checks it against its set, marks the
   * set dropped and DETACHes the month. Returns why not when the month changed since its set was
   * prepared, or a lock was not granted within LOCK_TIMEOUT.
   */
  private async detach(runner: QueryRunner, partition: AuditPartition, set: BaseSet): Promise<string | undefined> {
    const table = `"${partition.name}"`;
    const month = monthOf(partition);
    await runner.startTransaction();
    try {
      await sql(runner.manager, `SET LOCAL lock_timeout = '${LOCK_TIMEOUT}'`);
      // No event can enter the month from here on. One that did after its set was prepared (a
      // clock far behind) would be dropped unaccounted for: the set is prepared again next run.
      await sql(runner.manager, `LOCK TABLE ${table} IN SHARE MODE`);
      if (await this.bases.changedSince(runner.manager, table, set)) {
        await runner.rollbackTransaction();
        await this.discardSetsFrom(runner, month);
        return "events were written into it after its chains' bases were prepared; the next run prepares them again";
      }
      await this.bases.markDropped(runner.manager, month);
      // DETACH locks audit_events (ACCESS EXCLUSIVE: every audited write waits) until COMMIT.
      await sql(runner.manager, `ALTER TABLE audit_events DETACH PARTITION ${table}`);
      await runner.commitTransaction();
      return undefined;
    } catch (error) {
      if (runner.isTransactionActive) await runner.rollbackTransaction();
      if (pgErrorCode(error) === PG_LOCK_NOT_AVAILABLE) return BUSY_REASON;
      throw error;
    }
  }

  /**
   * Drops a detached month's table; returns how long it took. The files go in a transaction of
   * their own, which locks only the detached table: removing a month's table and indexes at
   * COMMIT took 0.8 s at 4.3M events, all of it inside the lock on audit_events while DROP
   * shared DETACH's transaction. Should the process stop (or this or the discard of the
   * superseded sets after it fail), the next run finishes both (dropDetachedMonths).
   */
  private async dropDetachedTable(runner: QueryRunner, partition: AuditPartition): Promise<number> {
    const removeStarted = performance.now();
    await sql(runner.manager, `DROP TABLE IF EXISTS "${partition.name}"`);
    return Math.round(performance.now() - removeStarted);
  }

  private async discardSetsFrom(runner: QueryRunner, month: string): Promise<void> {
    await this.inTransaction(runner, () => this.bases.discardFrom(runner.manager, month));
  }

  private async discardSupersededSets(runner: QueryRunner): Promise<void> {
    await this.inTransaction(runner, () => this.bases.discardSuperseded(runner.manager));
  }

  private async inTransaction(runner: QueryRunner, work: () => Promise<void>): Promise<void> {
    await runner.startTransaction();
    try {
      await work();
      await runner.commitTransaction();
    } catch (error) {
      await runner.rollbackTransaction();
      throw error;
    }
  }

  /**
   * Writes the month as an export of its time range (`audit-verify --file` checks it offline:
   * every event with its chain fields, in seq order, then the keyed seal), and the latest
   * checkpoint beside it; each file appears whole or not at all, and never in place of another
   * (publishFileDurably: written under a temporary name, synced, linked to its name, the
   * directory synced). The archive's name is `audit-events-YYYY-MM.ndjson`; one there already
   * with the same bytes (this month archived by a run whose drop was then held) is kept, with
   * the checkpoint beside it. One with other bytes may be the only copy of the events a month
   * held when it was dropped (by this database before it was restored from an older backup, or
   * by another deployment sharing AUDIT_ARCHIVE_DIR; or it is an earlier attempt's, before an
   * event came late into the month). It stays, and this archive goes beside it,
   * named after the month's greatest seq (`audit-events-YYYY-MM.<seq>.ndjson`, and its
   * `.checkpoint.json`; then with the time too, should that name hold other bytes), with a warning.
   * Null when AUDIT_ARCHIVE_DIR is not set.
   */
  private async archive(runner: QueryRunner, partition: AuditPartition): Promise<string | null> {
    const dir = this.config.get('AUDIT_ARCHIVE_DIR', { infer: true });
    if (!dir) return null;
    await makeDirectoryDurably(dir);
    // Under the retention lock: this deployment writes no other archive meanwhile.
    await sweepStalePartials(dir, 'audit-events-');
    const base = join(dir, `audit-events-${partition.from.toISOString().slice(0, 7)}`);
    const {
      rows: [{ last }],
    } = await sql<{ last: string | null }>(runner.manager, `SELECT max(seq)::text AS last FROM "${partition.name}"`);
    const maxSeq = last ?? '0';
    const stems = [base, `${base}.${maxSeq}`, `${base}.${maxSeq}.${compactTime(new Date())}`];
    // On disk before the month is dropped (see publishFileDurably): the archive may be its only copy.
    const archive = await publishFileDurably(
      stems.map((stem) => `${stem}.ndjson`),
      await this.exporter.open({ from: partition.from, to: partition.to }),
    );
    const stem = archive.file.slice(0, -'.ndjson'.length);
    if (stem !== base) {
      this.logger.warn(
        `${base}.ndjson holds other events of ${partition.name} (archived by an earlier attempt to drop it, before the month changed or the database was restored from an older backup, or by another deployment sharing AUDIT_ARCHIVE_DIR): it is kept as it is, and this archive is ${archive.file}`,
      );
    }
    await this.writeClosingCheckpoint(stem, archive.reused, maxSeq);
    return archive.file;
  }

  /** The latest checkpoint as `<stem>.checkpoint.json`, unless an archive found whole there already has its own. */
  private async writeClosingCheckpoint(stem: string, archiveReused: boolean, monthMaxSeq: string): Promise<void> {
    const closing = await this.chain.latestCheckpoint();
    if (!closing) return;
    const file = `${stem}.checkpoint.json`;
    // The checkpoint written beside those same bytes closed them, if it covers the month's last
    // event: it stays, and no other joins it each time a drop is retried. One that does not (an
    // archive kept from a run of 0.23.0, whose drop was then held) gets the current one beside it.
    if (archiveReused && (await coveredBy(file, monthMaxSeq))) return;
    const written = await publishFileDurably([file, `${stem}.${compactTime(new Date())}.checkpoint.json`], `${JSON.stringify(closing)}\n`);
    if (written.file !== file) {
      this.logger.warn(`${file} holds another checkpoint: it is kept as it is, and the one closing ${stem}.ndjson is ${written.file}`);
    }
  }
}

/** A time for a file name: `20260301T120000123Z`. */
function compactTime(time: Date): string {
  return time.toISOString().replace(/[-:.]/g, '');
}

/** Whether `file` holds a checkpoint that covers `maxSeq` (false when there is none, or it cannot be read as one). */
async function coveredBy(file: string, maxSeq: string): Promise<boolean> {
  try {
    const checkpoint = JSON.parse(await readFile(file, 'utf8')) as { maxSeq?: unknown };
    return typeof checkpoint.maxSeq === 'string' && /^\d+$/.test(checkpoint.maxSeq) && BigInt(checkpoint.maxSeq) >= BigInt(maxSeq);
  } catch {
    return false;
  }
}
