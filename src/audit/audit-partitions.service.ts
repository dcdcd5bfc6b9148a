import { Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { createHmac } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import { DataSource, EntityManager, QueryRunner } from 'typeorm';
import type { AppConfig } from '../config/config';
import { sql } from '../database/sql';
import { AuditChainService } from './audit-chain.service';
import { AuditExportService } from './audit-export.service';

// Any fixed 64-bit number works; this one spells "audparts" in ASCII.
const PARTITIONS_LOCK_KEY = '7022356976209572979';
/** Months created ahead of the current one, so an insert never lacks its partition. */
const MONTHS_AHEAD = 2;
const BATCH = 5000;
/** How long dropping a month may wait for the table lock (DETACH takes it briefly) before trying again next run. */
const LOCK_TIMEOUT = '5s';

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
  dropped: Array<{ name: string; events: number; archive: string | null }>;
  /** A month past retention that could not be dropped (and why); the next run tries again. */
  held: Array<{ name: string; reason: string }>;
}

/** The MAC of a chain's base: where its verification starts once the months before are dropped. */
export function baseMac(key: string, chainKey: string, position: number, hash: string): string {
  return createHmac('sha256', key)
    .update(JSON.stringify(['sessionary.audit.base.v1', chainKey, position, hash]))
    .digest('hex');
}

export function partitionOf(month: Date): AuditPartition {
  const from = new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth(), 1));
  const to = new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth() + 1, 1));
  const name = `audit_events_y${from.getUTCFullYear()}m${String(from.getUTCMonth() + 1).padStart(2, '0')}`;
  return { name, from, to };
}

interface BaseRow {
  chain_key: string;
  chain_pos: string;
  hash: string;
}

/**
 * The partitions of audit_events (one per month of created_at, UTC): creates them ahead of
 * time, and, when AUDIT_RETENTION_DAYS is set, drops each month once all of it is past
 * retention, after archiving it to AUDIT_ARCHIVE_DIR when set. A drop is one DETACH and one
 * DROP, no matter how many rows: no DELETE storm, no bloat, no long locks.
 *
 * Dropping the oldest events of a chain would break its verification, so each chain's last
 * event in the month becomes its base (position, hash and their MAC in audit_chain_heads):
 * the verifier starts the chain there. Each chain's times rise with its positions (events take
 * their time once the chain's head is locked), so a month holds a whole stretch of every chain;
 * a month for which that does not hold (a clock stepped back) is held, not dropped.
 */
@Injectable()
export class AuditPartitionsService {
  private readonly logger = new Logger(AuditPartitionsService.name);
  private readonly key: string;
  /** For /metrics. */
  readonly stats = { lastRunAt: null as Date | null, droppedEvents: 0, droppedPartitions: 0, partitions: 0 };

  constructor(
    @InjectDataSource() private readonly dataSource: DataSource,
    private readonly chain: AuditChainService,
    private readonly exporter: AuditExportService,
    private readonly config: ConfigService<AppConfig, true>,
  ) {
    this.key = config.get('AUDIT_HMAC_KEY', { infer: true });
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
    const result: MaintenanceResult = { skipped: false, created: [], dropped: [], held: [] };
    const runner = this.dataSource.createQueryRunner();
    await runner.connect();
    try {
      const {
        rows: [{ locked }],
      } = await sql<{ locked: boolean }>(runner.manager, 'SELECT pg_try_advisory_lock($1) AS locked', [PARTITIONS_LOCK_KEY]);
      if (!locked) return { ...result, skipped: true };
      try {
        const {
          rows: [{ now }],
        } = await sql<{ now: Date }>(runner.manager, 'SELECT now() AS now');
        result.created = await this.createAhead(runner, now);
        const days = this.config.get('AUDIT_RETENTION_DAYS', { infer: true });
        if (days !== undefined) await this.applyRetention(runner, new Date(now.getTime() - days * 86_400_000), result);
        this.stats.partitions = (await this.list(runner.manager)).length;
        this.stats.lastRunAt = new Date();
      } finally {
        await sql(runner.manager, 'SELECT pg_advisory_unlock($1)', [PARTITIONS_LOCK_KEY]);
      }
    } finally {
      await runner.release();
    }
    for (const d of result.dropped) this.logger.log({ event: 'audit.partition_dropped', partition: d.name, events: d.events, archive: d.archive });
    for (const h of result.held) this.logger.warn(`Audit partition ${h.name} is past retention but kept: ${h.reason}`);
    return result;
  }

  private async createAhead(runner: QueryRunner, now: Date): Promise<string[]> {
    const existing = new Set((await this.list(runner.manager)).map((p) => p.name));
    const created: string[] = [];
    for (let ahead = 0; ahead <= MONTHS_AHEAD; ahead++) {
      const partition = partitionOf(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + ahead, 1)));
      if (existing.has(partition.name)) continue;
      // IF NOT EXISTS: a partition created by the migration or another version is left as it is.
      await sql(
        runner.manager,
        `CREATE TABLE IF NOT EXISTS "${partition.name}" PARTITION OF audit_events
           FOR VALUES FROM ('${partition.from.toISOString()}') TO ('${partition.to.toISOString()}')`,
      );
      created.push(partition.name);
    }
    return created;
  }

  private async applyRetention(runner: QueryRunner, cutoff: Date, result: MaintenanceResult): Promise<void> {
    for (const partition of await this.list(runner.manager)) {
      if (partition.to > cutoff) break;
      const reason = await this.dropMonth(runner, partition, result);
      if (reason) {
        // Months are dropped oldest first: a later one would leave a gap in the chains.
        result.held.push({ name: partition.name, reason });
        break;
      }
    }
  }

  /** Archives (when configured) and drops one month; returns why not when it cannot. */
  private async dropMonth(runner: QueryRunner, partition: AuditPartition, result: MaintenanceResult): Promise<string | undefined> {
    const table = `"${partition.name}"`;
    const {
      rows: [unsealed],
    } = await sql<{ id: string }>(runner.manager, `SELECT id FROM ${table} WHERE hash IS NULL LIMIT 1`);
    if (unsealed) return `event ${unsealed.id} in it is not sealed into a chain yet`;
    const broken = await this.incompleteChain(runner, table, partition);
    if (broken) return broken;

    // A checkpoint of everything up to now: an archive is closed by it, and the chain's heads
    // as recorded outside the database stay comparable with what remains.
    await this.chain.checkpoint(true);
    const archive = await this.archive(partition);

    await runner.startTransaction();
    try {
      await sql(runner.manager, `SET LOCAL lock_timeout = '${LOCK_TIMEOUT}'`);
      let after = '';
      for (;;) {
        // Each chain's last event in the month: the batch's chains by a GroupAggregate that
        // streams the (chain_key, chain_pos) index (an index-only scan, stopping at the LIMIT),
        // then one index lookup each for the hash. (DISTINCT ON ... ORDER BY chain_pos DESC
        // sorted the rest of the month again for every batch: 30 s of a month's drop at 100k chains.)
        const { rows: bases } = await sql<BaseRow>(
          runner.manager,
          `SELECT last.chain_key, last.pos::text AS chain_pos, e.hash
             FROM (SELECT chain_key, max(chain_pos) AS pos FROM ${table}
                    WHERE chain_key > $1 GROUP BY chain_key ORDER BY chain_key LIMIT $2) last
             JOIN ${table} e ON e.chain_key = last.chain_key AND e.chain_pos = last.pos
            ORDER BY last.chain_key`,
          [after, BATCH],
        );
        if (!bases.length) break;
        await sql(
          runner.manager,
          `UPDATE audit_chain_heads h SET base_position = v.position, base_hash = v.hash, base_mac = v.mac
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS v(chain_key, position, hash, mac)
            WHERE h.chain_key = v.chain_key`,
          [
            bases.map((b) => b.chain_key),
            bases.map((b) => b.chain_pos),
            bases.map((b) => b.hash),
            bases.map((b) => baseMac(this.key, b.chain_key, Number(b.chain_pos), b.hash)),
          ],
        );
        after = bases[bases.length - 1].chain_key;
      }
      const {
        rows: [{ events }],
      } = await sql<{ events: number }>(runner.manager, `SELECT count(*)::int AS events FROM ${table}`);
      await sql(runner.manager, `ALTER TABLE audit_events DETACH PARTITION ${table}`);
      await sql(runner.manager, `DROP TABLE ${table}`);
      await runner.commitTransaction();
      this.stats.droppedEvents += events;
      this.stats.droppedPartitions++;
      result.dropped.push({ name: partition.name, events, archive });
      return undefined;
    } catch (error) {
      await runner.rollbackTransaction();
      throw error;
    }
  }

  /**
   * Whether some chain's stretch in the month is not whole, so that dropping the month would
   * leave a hole in it: why not, or undefined. The month is the oldest left (months go oldest
   * first), so each chain's events in it must be exactly the positions after its base (or from
   * 1) up to its last one in the month: fewer means a position of that stretch is elsewhere,
   * in a later month (a clock stepped back), or missing. One pass over the month's
   * (chain_key, chain_pos) index and the heads, instead of joining the month against every
   * later month (1.5 s of a month's drop at 100k chains, measured).
   */
  private async incompleteChain(runner: QueryRunner, table: string, partition: AuditPartition): Promise<string | undefined> {
    const {
      rows: [chain],
    } = await sql<{ chain_key: string; last: string }>(
      runner.manager,
      `SELECT m.chain_key, m.last::text AS last
         FROM (SELECT chain_key, min(chain_pos) AS first, max(chain_pos) AS last, count(*) AS events FROM ${table} GROUP BY chain_key) m
         LEFT JOIN audit_chain_heads h ON h.chain_key = m.chain_key
        WHERE m.first <> COALESCE(h.base_position, 0) + 1 OR m.events <> m.last - COALESCE(h.base_position, 0)
        LIMIT 1`,
    );
    if (!chain) return undefined;
    const {
      rows: [straggler],
    } = await sql<{ id: string }>(
      runner.manager,
      `SELECT id FROM audit_events WHERE chain_key = $1 AND chain_pos <= $2 AND created_at >= $3 ORDER BY chain_pos LIMIT 1`,
      [chain.chain_key, chain.last, partition.to],
    );
    if (straggler) return `event ${straggler.id}, of a later month, comes before some of its events in its chain (did the clock step back?)`;
    return `chain ${chain.chain_key} misses positions up to ${chain.last} in this month (run the audit verification)`;
  }

  /**
   * Writes the month as an export of its time range (`audit-verify --file` checks it offline:
   * every event with its chain fields, in seq order, then the keyed seal), and the latest
   * checkpoint beside it; each file appears whole or not at all (written under a temporary
   * name, then renamed). Null when AUDIT_ARCHIVE_DIR is not set.
   */
  private async archive(partition: AuditPartition): Promise<string | null> {
    const dir = this.config.get('AUDIT_ARCHIVE_DIR', { infer: true });
    if (!dir) return null;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const base = join(dir, `audit-events-${partition.from.toISOString().slice(0, 7)}`);
    const file = `${base}.ndjson`;
    try {
      await pipeline(await this.exporter.open({ from: partition.from, to: partition.to }), createWriteStream(`${file}.partial`, { mode: 0o600 }));
    } catch (error) {
      await rm(`${file}.partial`, { force: true });
      throw error;
    }
    await rename(`${file}.partial`, file);
    const closing = await this.chain.latestCheckpoint();
    if (closing) {
      await writeFile(`${base}.checkpoint.json.partial`, `${JSON.stringify(closing)}\n`, { mode: 0o600 });
      await rename(`${base}.checkpoint.json.partial`, `${base}.checkpoint.json`);
    }
    return file;
  }
}
