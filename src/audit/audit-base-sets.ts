import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { createHmac } from 'node:crypto';
import { EntityManager } from 'typeorm';
import type { AppConfig } from '../config/config';
import { rowsOf, sql } from '../database/sql';
import { pgClientOf, streamRows } from '../database/stream-rows';
import { type BaseSetFields, baseSetMac, ChainListDigest, sameMac } from './audit-chain';

/** Rows per query when the 0.8.0 bases are read in key order. */
const ROWS_BATCH = 10_000;
const MONTH = /^(\d{4})-(\d{2})-01$/;

/**
 * A month's base set as stored: what its MAC covers, the MAC, whether the month is dropped, and
 * what the drop's check reads (not under the MAC: they only serve that check, which guards
 * against the service's own late writers, not against someone who can write to the tables).
 */
export interface BaseSet extends BaseSetFields {
  mac: string;
  droppedAt: Date | null;
  /** The seq up to which the log was settled at preparation (settledAuditSeq); null when it was not. */
  settledSeq: string | null;
  /** The month's events with a greater seq than settledSeq at preparation. */
  eventsAfterSettled: number | null;
}

/** The events partition a set is prepared from: its month's first day (`YYYY-MM-DD`) and its table. */
export interface MonthToPrepare {
  month: string;
  table: string;
  /** The month's end (the next month's first instant). */
  to: Date;
}

/**
 * The MAC of a chain's base as 0.8.0 kept it, in audit_chain_heads (a MAC and an UPDATE per
 * chain at each drop). Still checked: by the verifier until a month is dropped with base sets,
 * and once, when the first set is prepared on top of those bases.
 */
export function legacyBaseMac(key: string, chainKey: string, position: number, hash: string): string {
  return createHmac('sha256', key)
    .update(JSON.stringify(['sessionary.audit.base.v1', chainKey, position, hash]))
    .digest('hex');
}

function checkedMonth(month: string): RegExpExecArray {
  const m = MONTH.exec(month);
  if (!m) throw new Error(`not a month's first day: ${month}`);
  return m;
}

/** The table that holds a month's set (a partition of audit_chain_bases). */
function tableOf(month: string): string {
  const m = checkedMonth(month);
  return `"audit_chain_bases_y${m[1]}m${m[2]}"`;
}

/** A month as an SQL literal (checked first: it goes into DDL and subqueries, where parameters cannot). */
function monthLiteral(month: string): string {
  return `'${checkedMonth(month)[0]}'::date`;
}

const SET_COLUMNS = `to_char(month, 'YYYY-MM-DD') AS month, chains, events::text AS events, max_seq::text AS max_seq, digest, mac, dropped_at,
  settled_seq::text AS settled_seq, events_after_settled::text AS events_after_settled`;

interface SetRow {
  month: string;
  chains: number;
  events: string;
  max_seq: string;
  digest: string;
  mac: string;
  dropped_at: Date | null;
  settled_seq: string | null;
  events_after_settled: string | null;
}

const toSet = (r: SetRow): BaseSet => ({
  month: r.month,
  chains: r.chains,
  events: Number(r.events),
  maxSeq: r.max_seq,
  digest: r.digest,
  mac: r.mac,
  droppedAt: r.dropped_at,
  settledSeq: r.settled_seq,
  eventsAfterSettled: r.events_after_settled === null ? null : Number(r.events_after_settled),
});

/**
 * Where every audit chain starts once months are dropped by retention.
 *
 * The set of month M holds, for every chain with an event in M or before, its last event up
 * to M's end (position and hash): the previous set with M's last events laid over it. It is
 * prepared before M is due (AuditPartitionsService, a day ahead), so that the drop itself is a
 * check that M did not change since, a flag, DETACH and DROP: the set costs one INSERT ... SELECT
 * and a read in key order, and is authenticated by one keyed digest over its rows, where 0.8.0
 * computed a MAC and updated a head per chain inside the drop (seconds at 100k chains).
 *
 * The set of the newest dropped month is in force: the verifier starts each chain there, and
 * the older sets are dropped with the month that supersedes them.
 */
@Injectable()
export class AuditBaseSets {
  private readonly key: string;

  constructor(config: ConfigService<AppConfig, true>) {
    this.key = config.get('AUDIT_HMAC_KEY', { infer: true });
  }

  /** Every prepared set, oldest first. */
  async list(em: EntityManager): Promise<BaseSet[]> {
    return (await rowsOf<SetRow>(em, `SELECT ${SET_COLUMNS} FROM audit_base_sets ORDER BY month`)).map(toSet);
  }

  /** The set in force: the newest dropped month's; undefined when no month was dropped with base sets. */
  async inForce(em: EntityManager): Promise<BaseSet | undefined> {
    const [row] = await rowsOf<SetRow>(em, `SELECT ${SET_COLUMNS} FROM audit_base_sets WHERE dropped_at IS NOT NULL ORDER BY month DESC LIMIT 1`);
    return row && toSet(row);
  }

  /** Whether a set's fields are the ones its MAC was made over. */
  isAuthentic(set: BaseSet): boolean {
    const { mac, droppedAt: _dropped, ...fields } = set;
    return sameMac(mac, baseSetMac(this.key, fields));
  }

  /** Whether a set's fields are the ones its MAC was made over, and its rows the ones its digest was. */
  private async isIntact(em: EntityManager, set: BaseSet): Promise<boolean> {
    if (!this.isAuthentic(set)) return false;
    const rows = await this.digest(em, set.month);
    return rows.chains === set.chains && rows.digest() === set.digest;
  }

  /** The month's event count and greatest seq: what a set records. */
  async fingerprint(em: EntityManager, table: string): Promise<{ events: number; maxSeq: string }> {
    const [row] = await rowsOf<{ events: string; max_seq: string }>(
      em,
      `SELECT count(*)::text AS events, COALESCE(max(seq), 0)::text AS max_seq FROM ${table}`,
    );
    return { events: Number(row.events), maxSeq: row.max_seq };
  }

  /** The month's events with a seq greater than `seq` (a range of its seq index). */
  private async eventsAfter(em: EntityManager, table: string, seq: string): Promise<number> {
    const [row] = await rowsOf<{ events: string }>(em, `SELECT count(*)::text AS events FROM ${table} WHERE seq > $1::bigint`, [seq]);
    return Number(row.events);
  }

  /**
   * Whether the month's table holds other events than when `set` was prepared. With a settled
   * seq, only the events above it can have changed (none up to it can appear later, and the
   * log refuses DELETE): the check reads that range of the seq index. Without one, the month
   * is counted whole. Run it while the table is locked against writes.
   */
  async changedSince(em: EntityManager, table: string, set: BaseSet): Promise<boolean> {
    if (set.settledSeq !== null && set.eventsAfterSettled !== null) {
      return (await this.eventsAfter(em, table, set.settledSeq)) !== set.eventsAfterSettled;
    }
    const now = await this.fingerprint(em, table);
    return now.events !== set.events || now.maxSeq !== set.maxSeq;
  }

  /**
   * Prepares the set of `target` on top of `previous` (the set of the month before, or, when
   * there is none, the bases 0.8.0 kept in audit_chain_heads, whose MACs are checked first).
   * Runs in the caller's transaction, which must see one snapshot (REPEATABLE READ) so that the
   * set, the counts and `settledSeq` (settledAuditSeq, taken before the transaction began, or
   * null) describe the same events. Returns the set, or why it cannot be prepared: an event
   * not sealed yet, or a chain whose stretch in the month is not whole (so that dropping the
   * month would leave a hole in it).
   */
  async prepare(em: EntityManager, target: MonthToPrepare, previous: BaseSet | undefined, settledSeq: string | null): Promise<BaseSet | string> {
    const events = target.table;
    const [unsealed] = await rowsOf<{ id: string }>(em, `SELECT id FROM ${events} WHERE hash IS NULL LIMIT 1`);
    if (unsealed) return `event ${unsealed.id} in it is not sealed into a chain yet`;
    if (!previous) {
      const forged = await this.forgedLegacyBase(em);
      if (forged) return `the base of chain ${forged} (kept by 0.8.0) does not match its MAC (run the audit verification)`;
    } else if (!(await this.isIntact(em, previous))) {
      // The set is carried forward: a row of it changed (a chain's base moved on, so that its
      // first events after that base could later be deleted unseen) would be sealed into this
      // one's MAC. Until 0.23.0 the previous set's rows were taken as they stood.
      return `the base set of ${previous.month} does not match its MAC and rows (run the audit verification)`;
    }
    const before = previous
      ? `(SELECT chain_key, position, hash FROM audit_chain_bases WHERE month = ${monthLiteral(previous.month)})`
      : `(SELECT chain_key, base_position AS position, base_hash AS hash FROM audit_chain_heads WHERE base_position IS NOT NULL)`;
    const incomplete = await this.incompleteChain(em, target, before);
    if (incomplete) return incomplete;

    const table = tableOf(target.month);
    await sql(em, `CREATE TABLE ${table} PARTITION OF audit_chain_bases FOR VALUES IN (${monthLiteral(target.month)})`);
    // Each chain's last event in the month: a GroupAggregate over the month's
    // (chain_key, chain_pos) index, then one lookup each for the hash; laid over the set before.
    await sql(
      em,
      `INSERT INTO audit_chain_bases (month, chain_key, position, hash)
       SELECT $1::date, COALESCE(cur.chain_key, prev.chain_key), COALESCE(cur.position, prev.position), COALESCE(cur.hash, prev.hash)
         FROM (SELECT last.chain_key, last.position, e.hash
                 FROM (SELECT chain_key, max(chain_pos) AS position FROM ${events} GROUP BY chain_key) last
                 JOIN ${events} e ON e.chain_key = last.chain_key AND e.chain_pos = last.position) cur
         FULL JOIN ${before} prev ON prev.chain_key = cur.chain_key`,
      [target.month],
    );
    const { events: count, maxSeq } = await this.fingerprint(em, events);
    const eventsAfterSettled = settledSeq === null ? null : await this.eventsAfter(em, events, settledSeq);
    const digest = await this.digest(em, target.month);
    const fields: BaseSetFields = { month: target.month, chains: digest.chains, events: count, maxSeq, digest: digest.digest() };
    const mac = baseSetMac(this.key, fields);
    await sql(
      em,
      `INSERT INTO audit_base_sets (month, chains, events, max_seq, digest, mac, settled_seq, events_after_settled)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
      [fields.month, fields.chains, fields.events, fields.maxSeq, fields.digest, mac, settledSeq, eventsAfterSettled],
    );
    return { ...fields, mac, droppedAt: null, settledSeq, eventsAfterSettled };
  }

  /** Marks a set's month dropped: its set comes into force (the sets it supersedes go with discardSuperseded). */
  async markDropped(em: EntityManager, month: string): Promise<void> {
    await sql(em, `UPDATE audit_base_sets SET dropped_at = now() WHERE month = $1`, [month]);
  }

  /**
   * Drops the sets older than the one in force (no longer read by anyone). Not in the
   * transaction that detaches the month: a set's table of 1M chains took 85 ms to remove at
   * COMMIT, with every audited write waiting on the DETACH's lock.
   */
  async discardSuperseded(em: EntityManager): Promise<void> {
    await this.discard(em, `month < (SELECT max(month) FROM audit_base_sets WHERE dropped_at IS NOT NULL)`);
  }

  /** Discards the sets of `month` and later (prepared from what was in the month, which changed since). */
  async discardFrom(em: EntityManager, month: string): Promise<void> {
    await this.discard(em, `month >= ${monthLiteral(month)} AND dropped_at IS NULL`);
  }

  private async discard(em: EntityManager, where: string): Promise<void> {
    const gone = await rowsOf<{ month: string }>(em, `DELETE FROM audit_base_sets WHERE ${where} RETURNING to_char(month, 'YYYY-MM-DD') AS month`);
    for (const { month } of gone) await sql(em, `DROP TABLE IF EXISTS ${tableOf(month)}`);
  }

  /**
   * The keyed digest's input: the set's rows in key order, streamed by one query (keyset
   * batches of 10,000 took 7 s for a set of 484k chains: a random heap page per row).
   */
  async digest(em: EntityManager, month: string): Promise<ChainListDigest> {
    const digest = new ChainListDigest('sessionary.audit.bases.v1');
    await streamRows(pgClientOf(em), `SELECT chain_key, position, hash FROM audit_chain_bases WHERE month = $1 ORDER BY chain_key`, [month], (r) =>
      digest.add(r[0]!, Number(r[1]), r[2]!),
    );
    return digest;
  }

  /**
   * Whether some chain's stretch in the month is not whole: why, or undefined. Each chain's
   * events in it must be exactly the positions after its base before the month (or from 1) up
   * to its last one in the month: fewer means a position of that stretch is in a later month
   * (a clock stepped back), or missing. One pass over the month's (chain_key, chain_pos) index.
   */
  private async incompleteChain(em: EntityManager, target: MonthToPrepare, before: string): Promise<string | undefined> {
    // min() and not LIMIT 1: with a LIMIT the planner bets on finding such a chain early and
    // joins by nested loop, which on a whole log (none found) ran for hours at 1M chains.
    const [found] = await rowsOf<{ chain_key: string | null }>(
      em,
      `SELECT min(m.chain_key) AS chain_key
         FROM (SELECT chain_key, min(chain_pos) AS first, max(chain_pos) AS last, count(*) AS events FROM ${target.table} GROUP BY chain_key) m
         LEFT JOIN ${before} prev ON prev.chain_key = m.chain_key
        WHERE m.first <> COALESCE(prev.position, 0) + 1 OR m.events <> m.last - COALESCE(prev.position, 0)`,
    );
    if (found.chain_key === null) return undefined;
    const [chain] = await rowsOf<{ chain_key: string; last: string }>(
      em,
      `SELECT chain_key, max(chain_pos)::text AS last FROM ${target.table} WHERE chain_key = $1 GROUP BY chain_key`,
      [found.chain_key],
    );
    const [straggler] = await rowsOf<{ id: string }>(
      em,
      `SELECT id FROM audit_events WHERE chain_key = $1 AND chain_pos <= $2 AND created_at >= $3 ORDER BY chain_pos LIMIT 1`,
      [chain.chain_key, chain.last, target.to],
    );
    if (straggler) return `event ${straggler.id}, of a later month, comes before some of its events in its chain (did the clock step back?)`;
    return `chain ${chain.chain_key} misses positions up to ${chain.last} in this month (run the audit verification)`;
  }

  /** The first chain whose 0.8.0 base does not match its MAC, if any. */
  private async forgedLegacyBase(em: EntityManager): Promise<string | undefined> {
    let after = '';
    for (;;) {
      const rows = await rowsOf<{ chain_key: string; position: string; hash: string; mac: string | null }>(
        em,
        `SELECT chain_key, base_position::text AS position, base_hash AS hash, base_mac AS mac FROM audit_chain_heads
          WHERE base_position IS NOT NULL AND chain_key > $1 ORDER BY chain_key LIMIT $2`,
        [after, ROWS_BATCH],
      );
      for (const r of rows) {
        if (!sameMac(r.mac, legacyBaseMac(this.key, r.chain_key, Number(r.position), r.hash))) return r.chain_key;
      }
      if (rows.length < ROWS_BATCH) return undefined;
      after = rows[rows.length - 1].chain_key;
    }
  }
}
