import { Injectable, Logger, OnModuleDestroy } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { appendFile } from 'node:fs/promises';
import { appendableTail, checkpointFileConflict } from './checkpoint-file';
import { DataSource, EntityManager } from 'typeorm';
import type { AppConfig } from '../config/config';
import { rowsOf, sql } from '../database/sql';
import {
  chainedEventOf,
  chainKeyOf,
  Checkpoint,
  checkpointMac,
  eventHash,
  GENESIS_HASH,
  HeadsDigest,
  PG_MICROS_UTC,
  sameMac,
  STORED_EVENT_COLUMNS,
  type StoredEventRow,
} from './audit-chain';
import { BUCKET_CHARS, bucketRange, type HeadsBucket, HeadsBucketer, HeadsRoot, HeadsTreeDigest, isHeadsDigestV2 } from './checkpoint-heads-digest';
import { checkpointMaxSeq } from './checkpoint-max-seq';
import { lockHeads } from './lock-heads';
import { readSeqSequence } from './seq-sequence';
import { settledAuditSeq } from './settled-seq';

// Any fixed 64-bit numbers work; these spell "audseal" and "audchkpt" in ASCII.
const SEAL_LOCK_KEY = '7022357861416547436';
const CHECKPOINT_LOCK_KEY = '7022356976209950836';
const SEAL_BATCH = 1000;
const HEADS_BATCH = 5000;
/** Buckets hashed again per statement: their heads are read by key range (about 15 a bucket at 1M chains). */
const BUCKETS_BATCH = 500;
/**
 * Past this many touched buckets (a quarter of the 65,536 that random user ids fill), one ordered
 * scan of every head costs less than a key range read for each.
 */
const TOUCHED_BUCKETS_MAX = 16_384;
/**
 * A checkpoint finds the chains that moved from the events since the last one's maxSeq when
 * there are at most this many of them or a quarter as many as chains; past that, comparing
 * every head with its recorded one (one hash join of both tables) costs less.
 */
const RANGE_EVENTS_MIN = 100_000;

export interface CheckpointRow {
  id: string;
  created_at: string;
  chains: string;
  events: string;
  max_seq: string;
  digest: string;
  prev_mac: string;
  mac: string;
}

export function toCheckpoint(r: CheckpointRow): Checkpoint {
  return {
    id: Number(r.id),
    createdAt: r.created_at,
    chains: Number(r.chains),
    events: Number(r.events),
    maxSeq: r.max_seq,
    digest: r.digest,
    prevMac: r.prev_mac,
    mac: r.mac,
  };
}

// Columns as text (bigint and the exact timestamp); a query over them must ORDER BY an alias-qualified
// column (c.id), since a bare name would sort by the text output column.
export const CHECKPOINT_COLUMNS = `id::text, to_char(created_at AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS created_at,
  chains::text, events::text, max_seq::text, digest, prev_mac, mac`;

/**
 * Seals events written before the chain existed, and writes checkpoints: keyed digests of all
 * chain heads, kept in audit_checkpoints and emitted outside the database (a log line, and an
 * NDJSON line in AUDIT_CHECKPOINT_FILE when set), so that a deleted tail is detected.
 */
@Injectable()
export class AuditChainService implements OnModuleDestroy {
  private readonly logger = new Logger('AuditChain');
  private readonly key: string;
  /** The checkpoints this instance wrote (the metrics read it): how many, how many hashed every bucket, the last one's time and duration. */
  readonly stats = { written: 0, fileFailures: 0, fileDiverged: 0, allBucketsHashed: 0, lastWrittenAt: null as Date | null, lastSeconds: 0 };
  /** How long a checkpoint waits for the transactions holding a seq before it to end (see checkpoint()). */
  private settleTimeoutMs = 5_000;
  /** Ends that wait when the service shuts down. */
  private readonly stopping = new AbortController();

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly config: ConfigService<AppConfig, true>,
  ) {
    this.key = config.get('AUDIT_HMAC_KEY', { infer: true });
  }

  /**
   * Moves the events' seq sequence past the greatest seq in the log and the latest checkpoint's
   * maxSeq when it is behind them: set back by a restore, or a major upgrade by logical
   * replication (which does not carry sequences). Every event written with a seq from below
   * would read as inserted out of its place for good, and the chains that moved meanwhile would
   * be found by no checkpoint. At boot, before this process writes; a role that may not read or
   * set the sequence leaves it (the verifier still says so). Forward only: a sequence that
   * moved on meanwhile (another instance writing) keeps its value.
   */
  async catchUpSeqSequence(): Promise<void> {
    const em = this.dataSource.manager;
    const sequence = await readSeqSequence(em);
    if (!sequence?.settable) return;
    // The latest checkpoint's maxSeq only when it is authentic: a row someone wrote with a seq
    // near the sequence's end would otherwise have every start exhaust it.
    const [latest] = await rowsOf<CheckpointRow>(em, `SELECT ${CHECKPOINT_COLUMNS} FROM audit_checkpoints c ORDER BY c.id DESC LIMIT 1`);
    let checkpointed = 0n;
    if (latest) {
      const { mac, ...fields } = toCheckpoint(latest);
      if (sameMac(mac, checkpointMac(this.key, fields))) checkpointed = BigInt(fields.maxSeq);
    }
    const target = checkpointed > sequence.greatestSeq ? checkpointed : sequence.greatestSeq;
    if (sequence.handedOut >= target) return;
    try {
      await sql(
        em,
        `SELECT setval($1, GREATEST($2::bigint, (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM ${sequence.name})))`,
        [sequence.name, target.toString()],
      );
    } catch (error) {
      // A read-only database (a standby's is never behind: its sequences come with the WAL):
      // the start goes on, and verification says what the sequence leaves.
      this.logger.error(
        `The audit events' seq sequence has handed out ${sequence.handedOut}, less than the log holds or its latest checkpoint covers (${target}), ` +
          `and could not be moved past it (${(error as Error).message}): events written now would read as inserted out of their place`,
      );
      return;
    }
    this.logger.warn(
      `The audit events' seq sequence had handed out ${sequence.handedOut}, less than the log holds or its latest checkpoint covers ` +
        `(${target}): set back by a restore or an upgrade by logical replication. Moved past ${target}; events written while it was behind keep their seqs`,
    );
  }

  /**
   * Refuses (throws) an AUDIT_HMAC_KEY that is not the one the log was written with: it must
   * verify the oldest checkpoint's MAC. A process with another key (another environment's, an
   * old one, a development key) would otherwise chain its events, and seal and checkpoint, with
   * it, and every one of them would read as altered from then on, as tampering does (until
   * 0.23.0 nothing checked). The oldest, because no DML statement changes or replaces it (the
   * table is append-only): a checkpoint added after the newest fails its MAC as tampering, and
   * the verifier reports it, without keeping the service from starting. Its owner can still
   * alter it (triggers off), hence the error's two readings and AUDIT_HMAC_KEY_CHECK=false, which
   * also starts a new key on purpose. A log without a checkpoint yet has nothing to check against.
   */
  async assertKeyWritesThisLog(): Promise<void> {
    if (!this.config.get('AUDIT_HMAC_KEY_CHECK', { infer: true })) return;
    const {
      rows: [oldest],
    } = await sql<CheckpointRow>(this.dataSource.manager, `SELECT ${CHECKPOINT_COLUMNS} FROM audit_checkpoints c ORDER BY c.id LIMIT 1`);
    if (!oldest) return;
    const { mac, ...fields } = toCheckpoint(oldest);
    if (sameMac(mac, checkpointMac(this.key, fields))) return;
    throw new AuditKeyMismatchError(fields.id, fields.createdAt);
  }

  /**
   * Appends the events that existed before the chain migration (seq up to audit_chain_seal's
   * bound) to their chains, in seq order, in batches; instances doing it at the same time take
   * turns under an advisory lock. Once none is left the bound is removed, so nothing written
   * later without the chain is ever sealed. Returns the number of events sealed.
   *
   * Only while the log has no checkpoint: every instance seals before it writes its first one,
   * so a log with checkpoints has sealed whatever came before the chain, and an unchained row
   * found then was put there since, with a bound put back beside it. Whoever owns the tables
   * can do that past the seal table's trigger (ALTER TABLE ... DISABLE TRIGGER), and until
   * 0.24.1 the next boot, or any command, then gave such a forged event a valid HMAC and the log
   * verified as intact. Now it is left as it is, an error says so at every boot, and the
   * verification reports it as inserted outside the service. (An owner who also deletes every
   * checkpoint is seen by a verification against an exported checkpoint, as a deleted tail is.)
   */
  async sealPending(): Promise<number> {
    if (await this.hasCheckpoint()) {
      const refused = await this.refuseSealingAfterCheckpoints();
      if (refused) {
        this.logger.error(
          `${refused} audit event(s) without the chain lie under a sealing bound, in a log that has checkpoints: not sealed. ` +
            'The events of before the chain were sealed before the first checkpoint, so these were written into the tables ' +
            'outside the service; npm run cli -- audit-verify names the first',
        );
      }
      return 0;
    }
    let total = 0;
    for (;;) {
      const sealed = await this.dataSource.transaction((em) => this.sealBatch(em));
      total += sealed;
      if (sealed < SEAL_BATCH) break;
    }
    if (total) this.logger.warn(`Sealed ${total} audit event(s) written before the hash chain existed`);
    return total;
  }

  private async hasCheckpoint(): Promise<boolean> {
    const { rows } = await sql(this.dataSource.manager, 'SELECT 1 FROM audit_checkpoints LIMIT 1');
    return rows.length > 0;
  }

  /**
   * How many unchained events lie under the bound; none: the bound is removed (a leftover of a
   * log whose events were all chained already, which seals nothing).
   */
  private async refuseSealingAfterCheckpoints(): Promise<number> {
    return this.dataSource.transaction(async (em) => {
      await sql(em, 'SELECT pg_advisory_xact_lock($1)', [SEAL_LOCK_KEY]);
      const {
        rows: [{ pending }],
      } = await sql<{ pending: number }>(
        em,
        `SELECT count(*)::int AS pending FROM audit_events WHERE hash IS NULL AND seq <= (SELECT max(up_to_seq) FROM audit_chain_seal)`,
      );
      if (pending === 0) await sql(em, 'DELETE FROM audit_chain_seal');
      return pending;
    });
  }

  private async sealBatch(em: EntityManager): Promise<number> {
    await sql(em, 'SELECT pg_advisory_xact_lock($1)', [SEAL_LOCK_KEY]);
    const { rows } = await sql<StoredEventRow>(
      em,
      `SELECT ${STORED_EVENT_COLUMNS}
         FROM audit_events
        WHERE hash IS NULL AND seq <= (SELECT max(up_to_seq) FROM audit_chain_seal)
        ORDER BY seq LIMIT $1 FOR UPDATE`,
      [SEAL_BATCH],
    );
    // The last batch: nothing up to the bound is left unsealed once it commits.
    if (rows.length < SEAL_BATCH) await sql(em, 'DELETE FROM audit_chain_seal');
    if (!rows.length) return 0;
    const keys = [...new Set(rows.map((r) => chainKeyOf(r.user_id)))].sort();
    const heads = await lockHeads(em, keys);
    const tip = new Map(heads.map((h) => [h.chain_key, { position: Number(h.position), hash: h.hash }]));
    const sealed = rows.map((r) => {
      const chainKey = chainKeyOf(r.user_id);
      const head = tip.get(chainKey)!;
      const event = chainedEventOf(r, chainKey, head.position + 1);
      const hash = eventHash(this.key, head.hash, event);
      const prevHash = head.hash;
      tip.set(chainKey, { position: event.position, hash });
      return { id: r.id, chainKey, position: event.position, prevHash, hash };
    });
    await sql(
      em,
      `WITH sealed AS (
         UPDATE audit_events e SET chain_key = v.chain_key, chain_pos = v.chain_pos, prev_hash = v.prev_hash, hash = v.hash
           FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[]) AS v(id, chain_key, chain_pos, prev_hash, hash)
          WHERE e.id = v.id)
       UPDATE audit_chain_heads h SET position = v.position, hash = v.hash
         FROM unnest($6::text[], $7::bigint[], $8::text[]) AS v(chain_key, position, hash)
        WHERE h.chain_key = v.chain_key`,
      [
        sealed.map((s) => s.id),
        sealed.map((s) => s.chainKey),
        sealed.map((s) => s.position),
        sealed.map((s) => s.prevHash),
        sealed.map((s) => s.hash),
        keys,
        keys.map((k) => tip.get(k)!.position),
        keys.map((k) => tip.get(k)!.hash),
      ],
    );
    return rows.length;
  }

  /**
   * Writes a checkpoint when one is due (AUDIT_CHECKPOINT_EVERY events or
   * AUDIT_CHECKPOINT_INTERVAL seconds since the last one, and at least one new event), or
   * whenever there is a new event with `force`. One instance at a time (advisory lock); the
   * others return undefined.
   */
  async checkpoint(force = false): Promise<Checkpoint | undefined> {
    const started = performance.now();
    if (!(await this.isDue(this.dataSource.manager, force))) return undefined;
    // Every event with a seq up to `settled` is committed or rolled back once this returns, so
    // the copy's snapshot, taken after it, holds all of them that will ever exist: the seq this
    // checkpoint states it covers (maxSeq), and from which the next one looks for moved chains.
    // Null (a transaction that wrote an event still open after the wait): this checkpoint
    // claims no more than the last one did.
    const settled = await settledAuditSeq(this.dataSource.manager, this.settleTimeoutMs, this.stopping.signal);
    if (this.stopping.signal.aborted) return undefined;
    let hashedAll = false;
    const written = await this.dataSource.transaction(async (em) => {
      const {
        rows: [{ locked }],
      } = await sql<{ locked: boolean }>(em, 'SELECT pg_try_advisory_xact_lock($1) AS locked', [CHECKPOINT_LOCK_KEY]);
      if (!locked) return undefined;
      const due = await this.isDue(em, force);
      if (!due) return undefined;
      const { last, maxSeq: currentMaxSeq } = due;
      // No statement timeout: a checkpoint that copies a great many heads (the first one after
      // a large log was sealed: 1M heads took over the pool's 15 s) must finish, or every later
      // one would fail the same way.
      await sql(em, `SET LOCAL statement_timeout = 0`);
      // Events sealed into their chains (those from before the chain existed, sealed at boot)
      // move heads without a new seq: while any wait, every head is compared.
      const {
        rows: [{ sealing }],
      } = await sql<{ sealing: boolean }>(em, `SELECT EXISTS (SELECT 1 FROM audit_chain_seal) AS sealing`);
      // The heads this checkpoint builds on must be those the last one stated: the copy moves a
      // head only forward from its recorded position, and the digest re-hashes only the buckets
      // the copy touched, so heads set back in the table (a chain's tail deleted, its head and
      // recorded head moved back to match) were stated anew by this checkpoint until 0.23.0,
      // and the deleted tail, covered by the last exported checkpoint, no longer showed.
      const checked = last && isHeadsDigestV2(last.digest) ? await this.checkedBuckets(em, last) : 'unchecked';
      // The chains that moved are those with an event after the last checkpoint's maxSeq, when
      // it states one every event up to which it covered (format 2) and there are not so many
      // events since that comparing every head costs less.
      // The seq every event up to which the last checkpoint's heads hold (settled: format 2).
      const covered = last && isHeadsDigestV2(last.digest) && !sealing ? last.max_seq : null;
      const since =
        covered !== null && BigInt(currentMaxSeq) - BigInt(covered) <= BigInt(Math.max(RANGE_EVENTS_MIN, Math.floor(Number(last!.chains) / 4)))
          ? covered
          : null;
      // The heads that moved, copied as committed now (one statement, one snapshot) into the
      // checkpoint's own table, which only this job writes: no head is locked, so no writer
      // waits for a checkpoint. (Until 0.11.1 the copy was in the heads' rows, under their row
      // locks, and with them the login or refresh of every user active since the last
      // checkpoint waited for the digest of every head: 4.2–4.7 s at 944k chains.) A writer
      // that moves a head meanwhile leaves it for the next checkpoint.
      // Without `since`, every head is compared with its recorded one: no ORDER BY, which
      // steered the plan to a merge join of both tables in key order, a random heap page per
      // head (10.9 s at 944k chains, against 1.7 s for a hash join of two scans).
      // Only forward, and only past the recorded head: a head behind its recorded position (or
      // beside it, with another hash), or a chain whose event at that position now has another
      // hash (its tail deleted, the head set back, and the chain grown again past it), was
      // rewritten by someone, not moved by a writer. Left recorded as it was, the verifier names
      // the chain; copying it over would have hidden the deleted tail from every later
      // verification. An event no longer there went with its month (retention), or was deleted
      // with those after it (then the head did not move past it). A scalar subquery, so that
      // PostgreSQL looks up each candidate's event by the chain index instead of joining all
      // events; first in the month of the time recorded with the head (`event_at`, the head's
      // `last_event_at` when copied), which PostgreSQL prunes to at run time: in every month's
      // index, the lookup took 1.7 ms a chain at 50M events, nearly all of a checkpoint's time
      // (0.16 ms in one month). The time is a hint outside the digest: when it finds no event
      // (NULL, recorded before 0.12.1; a head moved by sealing, which keeps its time; or
      // changed), COALESCE looks in every month, so a wrong time costs a lookup, never the check.
      // A recorded chain moves only when every event past its recorded head has a seq past the
      // one the last checkpoint covers, as every writer's has (that checkpoint's snapshot held all
      // events up to it). One with a seq from below was deleted and inserted again out of its
      // place: never shipped, and in no checkpoint. Left recorded where it was, the verifier names
      // that event; copied past it once the chain moved on (until 0.26.0), the log verified as
      // intact again. Looked at first in the months from an hour before the last checkpoint on (a
      // bound under its MAC, pruned at run time; an event past the recorded head was written
      // after that checkpoint's copy, in a transaction that took its time before): every
      // position up to the head there, none with a seq from below. Else (a transaction open over
      // an hour, or such an event) an event with a seq from below is looked for in every month,
      // so the bound costs a lookup, never the check. Whichever way the chains that moved are
      // found: a seq made to jump (setval) sends the next checkpoint to compare every head.
      const coveredCheck =
        covered === null
          ? ''
          : `AND (coalesce((SELECT count(DISTINCT e.chain_pos) = h.position - p.position AND bool_and(e.seq > $1::bigint)
                              FROM audit_events e
                             WHERE e.chain_key = h.chain_key AND e.chain_pos > p.position AND e.chain_pos <= h.position
                               AND e.created_at >= $2::timestamptz - interval '1 hour'), false)
                  OR NOT EXISTS (SELECT 1 FROM audit_events e
                    WHERE e.chain_key = h.chain_key AND e.chain_pos > p.position AND e.seq <= $1::bigint))`;
      // RETURNING: which buckets of the digest's tree the copy touched, and how many chains it added.
      const moved =
        since === null
          ? `audit_chain_heads h`
          : `(SELECT DISTINCT chain_key FROM audit_events WHERE seq > $1::bigint AND chain_key IS NOT NULL) m
             JOIN audit_chain_heads h ON h.chain_key = m.chain_key`;
      // With the stored buckets as the last checkpoint stated them, each copied chain's recorded
      // head before the copy comes back too (null for a chain new to the table), so that the
      // touched buckets' heads as they were can be checked against those buckets. Only when the
      // chains that moved are found from the events since the last checkpoint (at most
      // max(100,000, a quarter of the chains) of them, about 40 MB at worst at 1M chains): when
      // every head is compared instead, any number of them may move, and every recorded head is
      // hashed before the copy, in batches, and compared with the last checkpoint's root.
      const withOld = checked === 'stored' && since !== null;
      if (checked === 'stored' && since === null && (await digestCheckpointedHeads(em, 'v2')).digest !== last!.digest) {
        throw new CheckpointedHeadsChangedError(Number(last!.id));
      }
      // Read twice when the old heads come back (so evaluated once, before the copy, as its
      // snapshot sees them); otherwise once, and left for the planner to inline into the copy
      // rather than gathered first into a tuplestore of every moved chain.
      const { rows: touched } = await sql<TouchedBucket>(
        em,
        `WITH candidates AS ${withOld ? 'MATERIALIZED ' : ''}(
           SELECT h.chain_key, h.position, h.hash, h.last_event_at, p.position AS old_position, p.hash AS old_hash
             FROM ${moved} LEFT JOIN audit_checkpoint_heads p ON p.chain_key = h.chain_key
            WHERE p.chain_key IS NULL
               OR (h.position > p.position
                   AND NOT coalesce(
                     (SELECT e.hash <> p.hash FROM audit_events e
                       WHERE e.chain_key = h.chain_key AND e.chain_pos = p.position AND e.created_at = p.event_at LIMIT 1),
                     (SELECT e.hash <> p.hash FROM audit_events e
                       WHERE e.chain_key = h.chain_key AND e.chain_pos = p.position LIMIT 1),
                     false)
                   ${coveredCheck})
         ), copied AS (
           INSERT INTO audit_checkpoint_heads (chain_key, position, hash, event_at)
           SELECT chain_key, position, hash, last_event_at FROM candidates
           ON CONFLICT (chain_key) DO UPDATE SET position = excluded.position, hash = excluded.hash, event_at = excluded.event_at
           -- xmax is 0 on a row the INSERT created, the updating transaction's id on one it updated.
           RETURNING chain_key, xmax = 0 AS inserted
         )
         ${
           withOld
             ? `SELECT left(c.chain_key, ${BUCKET_CHARS}) AS bucket, count(*)::int AS copied, count(*) FILTER (WHERE c.inserted)::int AS inserted,
                       array_agg(c.chain_key) AS keys, array_agg(k.old_position::text) AS old_positions, array_agg(k.old_hash) AS old_hashes
                  FROM copied c JOIN candidates k ON k.chain_key = c.chain_key GROUP BY 1`
             : `SELECT left(chain_key, ${BUCKET_CHARS}) AS bucket, count(*)::int AS copied, count(*) FILTER (WHERE inserted)::int AS inserted
                  FROM copied GROUP BY 1`
         }`,
        covered === null ? [] : [covered, last!.created_at],
      );
      const copied = touched.reduce((n, t) => n + t.copied, 0);
      const before = withOld ? { lastId: Number(last!.id), heads: recordedBefore(touched) } : undefined;
      const heads = await this.digestHeads(em, last, touched, before, checked === 'rebuild');
      hashedAll = heads.hashedAll;
      // A copy that changed a large share of the table (the first checkpoint of a large log)
      // leaves its statistics behind until autovacuum comes by; planned without them, a
      // verification pass at 1M chains read its key range of this table by bitmap, 2.4 s a pass
      // instead of a scan's 0.3 s (measured). ANALYZE samples it (a fraction of a second).
      if (copied >= 10_000 && copied * 10 >= heads.chains) await sql(em, `ANALYZE audit_checkpoint_heads`);
      const {
        rows: [{ now }],
      } = await sql<{ now: string }>(em, `SELECT to_char(now() AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS now`);
      // What it covers (see checkpointMaxSeq): the settled seq, never below the last one's; '0'
      // after a checkpoint of format 1 (whose maxSeq was read, not settled) or while events are
      // being sealed, so that the next one compares every head.
      const maxSeq = checkpointMaxSeq(sealing, settled, last && isHeadsDigestV2(last.digest) ? last.max_seq : '0');
      const fields = {
        id: last ? Number(last.id) + 1 : 1,
        createdAt: now as string,
        chains: heads.chains,
        events: heads.events,
        maxSeq,
        digest: heads.digest,
        prevMac: last ? last.mac : GENESIS_HASH,
      };
      const checkpoint: Checkpoint = { ...fields, mac: checkpointMac(this.key, fields) };
      await sql(
        em,
        `INSERT INTO audit_checkpoints (id, created_at, chains, events, max_seq, digest, prev_mac, mac)
         VALUES ($1, $2::timestamptz, $3, $4, $5, $6, $7, $8)`,
        [
          checkpoint.id,
          checkpoint.createdAt,
          checkpoint.chains,
          checkpoint.events,
          checkpoint.maxSeq,
          checkpoint.digest,
          checkpoint.prevMac,
          checkpoint.mac,
        ],
      );
      return checkpoint;
    });
    if (written) {
      this.stats.written++;
      if (hashedAll) this.stats.allBucketsHashed++;
      this.stats.lastWrittenAt = new Date(written.createdAt);
      this.stats.lastSeconds = (performance.now() - started) / 1000;
      await this.export(written);
    }
    return written;
  }

  /**
   * The format-2 digest of the checkpointed heads once the copy is in: the buckets it touched
   * hashed again from their heads, then the root over every bucket's stored digest, so that a
   * checkpoint hashes the heads near those that moved, not all of them. Every bucket is hashed
   * again instead when the last checkpoint is not of format 2 (the first one after the
   * upgrade), when the copy touched so many buckets that one ordered scan of every head costs
   * less, or when the stored buckets do not count the chains the last checkpoint stated plus
   * those the copy added (they were not kept beside the heads: a migration reverted and applied
   * again, or someone changed them). The verifier trusts none of the stored buckets: it
   * recomputes the whole tree from the heads.
   */
  private async digestHeads(
    em: EntityManager,
    last: CheckpointRow | undefined,
    touched: Array<{ bucket: string; inserted: number }>,
    before: HeadsBefore | undefined,
    rebuild: boolean,
  ): Promise<CheckpointedHeads & { hashedAll: boolean }> {
    if (!rebuild && last && isHeadsDigestV2(last.digest) && touched.length <= TOUCHED_BUCKETS_MAX) {
      await this.rehashBuckets(
        em,
        touched.map((t) => t.bucket),
        before,
      );
      const heads = await rootOfStoredBuckets(em);
      const expected = Number(last.chains) + touched.reduce((n, t) => n + t.inserted, 0);
      if (heads.chains === expected) return { ...heads, hashedAll: false };
      this.logger.warn(`The checkpoint's stored bucket digests count ${heads.chains} chains, not ${expected}: hashing every bucket again`);
      // The touched buckets were checked, and are stored as they are now: nothing left to compare.
      return { ...(await this.rehashAllBuckets(em, undefined)), hashedAll: true };
    }
    return { ...(await this.rehashAllBuckets(em, before)), hashedAll: true };
  }

  /**
   * Whether the checkpointed heads are those `last` stated: 'stored' when the stored bucket
   * digests make its root (then each bucket is what it stated, and the buckets the copy
   * touches are checked head by head as they were: see BucketsBefore); 'rebuild' when they do
   * not, but every head hashed again does (the buckets were not kept beside the heads: a
   * migration reverted and applied again), and this checkpoint hashes every bucket again.
   * Otherwise the heads were changed outside the service: no checkpoint is written.
   */
  private async checkedBuckets(em: EntityManager, last: CheckpointRow): Promise<'stored' | 'rebuild'> {
    const stored = await rootOfStoredBuckets(em);
    if (stored.digest === last.digest) return 'stored';
    const heads = await digestCheckpointedHeads(em, 'v2');
    if (heads.digest !== last.digest) throw new CheckpointedHeadsChangedError(Number(last.id));
    this.logger.warn(
      `The stored bucket digests do not make checkpoint ${last.id}'s root, its heads do (the buckets were changed, or not kept ` +
        `beside the heads: a migration reverted and applied again): hashing every bucket again`,
    );
    return 'rebuild';
  }

  /**
   * Hashes the given buckets again from their heads (read by key range, a batch of buckets a
   * statement) and stores them; with `before`, first checks that their heads as they were
   * before the copy hash to the buckets stored (those of the last checkpoint).
   */
  private async rehashBuckets(em: EntityManager, buckets: string[], before: HeadsBefore | undefined): Promise<void> {
    // Those reads are short, but estimated far above it (a range of unknown bounds): JIT
    // compiling them took longer than running them (0.1 s of 0.2 s a batch, measured).
    await sql(em, `SET LOCAL jit = off`);
    for (let i = 0; i < buckets.length; i += BUCKETS_BATCH) {
      const batch = buckets.slice(i, i + BUCKETS_BATCH);
      const ranges = batch.map(bucketRange);
      const { rows } = await sql<HeadRow>(
        em,
        // One index range scan per bucket: as a plain join, PostgreSQL guessed a third of the
        // table per range and walked the whole index once, comparing every head with every
        // range (29 s for 500 buckets at 1M chains; OFFSET 0 keeps the subquery apart, 0.1 s).
        `SELECT p.chain_key, p.position::text AS position, p.hash
           FROM unnest($1::text[], $2::text[]) AS r(lo, hi)
           CROSS JOIN LATERAL (
             SELECT chain_key, position, hash FROM audit_checkpoint_heads
              WHERE chain_key >= r.lo COLLATE "C" AND chain_key < r.hi COLLATE "C" OFFSET 0
           ) p
          ORDER BY p.chain_key`,
        [ranges.map((r) => r[0]), ranges.map((r) => r[1])],
      );
      const hashed: HeadsBucket[] = [];
      const bucketer = new HeadsBucketer((b) => hashed.push(b));
      const check = before && new BucketsBefore(before.lastId, before.heads, await storedBuckets(em, batch));
      for (const r of rows) {
        bucketer.add(r.chain_key, Number(r.position), r.hash);
        check?.add(r.chain_key, r.position, r.hash);
      }
      bucketer.flush();
      check?.finish(batch);
      await storeBuckets(em, hashed);
      // A touched bucket left without heads (none is ever removed, so only if someone removed them) leaves the tree.
      const kept = new Set(hashed.map((h) => h.bucket));
      const emptied = batch.filter((b) => !kept.has(b));
      if (emptied.length) await sql(em, `DELETE FROM audit_checkpoint_buckets WHERE bucket = ANY($1::text[])`, [emptied]);
    }
  }

  /**
   * Hashes every bucket again from one ordered read of every head, replacing the stored ones;
   * returns the root over them (the tree the read made, so the buckets are not read back).
   */
  private async rehashAllBuckets(em: EntityManager, before: HeadsBefore | undefined): Promise<CheckpointedHeads> {
    const check = before && new BucketsBefore(before.lastId, before.heads, await storedBuckets(em));
    await sql(em, `DELETE FROM audit_checkpoint_buckets`);
    let hashed: HeadsBucket[] = [];
    const tree = new HeadsTreeDigest((b) => hashed.push(b));
    await streamCheckpointedHeads(em, async (rows) => {
      for (const r of rows) {
        tree.add(r.chain_key, Number(r.position), r.hash);
        check?.add(r.chain_key, r.position, r.hash);
      }
      if (hashed.length >= HEADS_BATCH) {
        await storeBuckets(em, hashed);
        hashed = [];
      }
    });
    const heads = tree.finish();
    check?.finish();
    await storeBuckets(em, hashed);
    return heads;
  }

  /**
   * The last checkpoint and the greatest seq now, when a checkpoint is due: AUDIT_CHECKPOINT_EVERY
   * events past the last one's maxSeq, or AUDIT_CHECKPOINT_INTERVAL seconds since it and an
   * event past it; with `force`, any event past it.
   */
  private async isDue(
    em: EntityManager,
    force: boolean,
  ): Promise<{ last: (CheckpointRow & { age: number }) | undefined; maxSeq: string } | undefined> {
    const {
      rows: [last],
    } = await sql<CheckpointRow & { age: number }>(
      em,
      `SELECT ${CHECKPOINT_COLUMNS}, extract(epoch FROM now() - created_at)::float8 AS age
         FROM audit_checkpoints c ORDER BY c.id DESC LIMIT 1`,
    );
    const {
      rows: [{ max_seq }],
    } = await sql<{ max_seq: string }>(em, `SELECT coalesce(max(seq), 0)::text AS max_seq FROM audit_events`);
    if (last ? BigInt(max_seq) <= BigInt(last.max_seq) : max_seq === '0') return undefined;
    if (!force && last) {
      const every = BigInt(this.config.get('AUDIT_CHECKPOINT_EVERY', { infer: true }));
      const interval = this.config.get('AUDIT_CHECKPOINT_INTERVAL', { infer: true });
      if (BigInt(max_seq) - BigInt(last.max_seq) < every && last.age < interval) return undefined;
    }
    return { last, maxSeq: max_seq };
  }

  onModuleDestroy(): void {
    this.stopping.abort();
  }

  /** The newest checkpoint in the table, if any. */
  async latestCheckpoint(em: EntityManager = this.dataSource.manager): Promise<Checkpoint | undefined> {
    const {
      rows: [row],
    } = await sql<CheckpointRow>(em, `SELECT ${CHECKPOINT_COLUMNS} FROM audit_checkpoints c ORDER BY c.id DESC LIMIT 1`);
    return row ? toCheckpoint(row) : undefined;
  }

  /** The MAC the checkpoints table holds under `id`, if it holds that checkpoint. */
  private async storedMac(id: number): Promise<string | undefined> {
    const {
      rows: [row],
    } = await sql<{ mac: string }>(this.dataSource.manager, `SELECT mac FROM audit_checkpoints WHERE id = $1`, [id]);
    return row?.mac;
  }

  /** Outside the database: one structured log line, and one NDJSON line in AUDIT_CHECKPOINT_FILE. */
  private async export(checkpoint: Checkpoint): Promise<void> {
    this.logger.log({ event: 'audit.checkpoint', ...checkpoint });
    const file = this.config.get('AUDIT_CHECKPOINT_FILE', { infer: true });
    if (!file) return;
    try {
      // Never after a checkpoint the table no longer holds as it was: the table went back (checkpointFileConflict).
      // Compared with the file's last checkpoint even when lines that are not checkpoints follow
      // it (an append cut short: verification reports them), which until 0.24.1 went unchecked.
      const { last, endsMidLine } = await appendableTail(file);
      const conflict = last && checkpointFileConflict(last, await this.storedMac(last.id));
      if (conflict) {
        this.stats.fileDiverged++;
        this.logger.error(
          `Audit checkpoint ${checkpoint.id} was not appended to AUDIT_CHECKPOINT_FILE: ${conflict}. The checkpoints table went back ` +
            `(a restore from a backup, a failover that lost writes, or its newest rows deleted): audit-verify --checkpoint-file reports what is missing; ` +
            `keep this file as evidence and give AUDIT_CHECKPOINT_FILE a new one`,
        );
        return;
      }
      await appendFile(file, `${endsMidLine ? '\n' : ''}${JSON.stringify(checkpoint)}\n`, { mode: 0o600 });
    } catch (error) {
      this.stats.fileFailures++;
      this.logger.error(`Audit checkpoint ${checkpoint.id} could not be appended to AUDIT_CHECKPOINT_FILE: ${(error as Error).message}`);
    }
  }
}

/** AUDIT_HMAC_KEY does not verify the log's oldest checkpoint: not the key the log was written with. */
export class AuditKeyMismatchError extends Error {
  constructor(checkpointId: number, createdAt: string) {
    super(
      `AUDIT_HMAC_KEY is not the key this audit log was written with, or checkpoint ${checkpointId}, the oldest ` +
        `(written ${createdAt}), was altered: the key does not verify it. Nothing was written. Set the AUDIT_HMAC_KEY ` +
        "the service's instances use (with another key every event written from now on would read as altered); " +
        'to find out which, run audit-verify with AUDIT_HMAC_KEY_CHECK=false; to change the key on purpose, set AUDIT_HMAC_KEY_CHECK=false',
    );
    this.name = 'AuditKeyMismatchError';
  }
}

/** The checkpoint was not written: the checkpointed heads are not those the last checkpoint stated. */
export class CheckpointedHeadsChangedError extends Error {
  constructor(lastId: number, detail?: string) {
    super(
      `No audit checkpoint written: the checkpointed chain heads are not those checkpoint ${lastId} stated` +
        `${detail ? ` (${detail})` : ''}; they were changed outside the service, as a chain's deleted tail would be covered up. ` +
        'Run the audit verification (npm run cli -- audit-verify --checkpoint-file <AUDIT_CHECKPOINT_FILE>)',
    );
    this.name = 'CheckpointedHeadsChangedError';
  }
}

/** What the copy statement answers per bucket it touched. */
interface TouchedBucket {
  bucket: string;
  copied: number;
  inserted: number;
  /** With the recorded heads before the copy asked for: the copied chains, and their recorded heads then (null: none). */
  keys?: string[];
  old_positions?: Array<string | null>;
  old_hashes?: Array<string | null>;
}

/** Each copied chain's recorded head before the copy (null: the chain was not recorded). */
type RecordedBefore = Map<string, { position: string; hash: string } | null>;

/** The recorded heads before the copy, and the checkpoint that stated them. */
interface HeadsBefore {
  lastId: number;
  heads: RecordedBefore;
}

function recordedBefore(touched: TouchedBucket[]): RecordedBefore {
  const before: RecordedBefore = new Map();
  for (const t of touched) {
    t.keys?.forEach((key, i) => {
      const position = t.old_positions![i];
      before.set(key, position === null ? null : { position, hash: t.old_hashes![i]! });
    });
  }
  return before;
}

/** The stored bucket digests (the given ones, or all), by bucket. */
async function storedBuckets(em: EntityManager, buckets?: string[]): Promise<Map<string, HeadsBucket>> {
  const { rows } = await sql<{ bucket: string; chains: string; events: string; digest: string }>(
    em,
    `SELECT bucket, chains::text AS chains, events::text AS events, digest FROM audit_checkpoint_buckets ${buckets ? 'WHERE bucket = ANY($1::text[])' : ''}`,
    buckets ? [buckets] : [],
  );
  return new Map(rows.map((r) => [r.bucket, { bucket: r.bucket, chains: Number(r.chains), events: Number(r.events), digest: r.digest }]));
}

/**
 * The buckets of the heads as they were before the copy (the heads read after it, each copied
 * one put back as it was recorded, a new one left out), compared with the stored buckets, which
 * make the last checkpoint's root: a head changed in the table before the copy shows as a
 * bucket that no longer hashes to its stored digest.
 */
class BucketsBefore {
  private readonly hashed = new Map<string, HeadsBucket>();
  private readonly bucketer = new HeadsBucketer((b) => this.hashed.set(b.bucket, b));

  constructor(
    private readonly lastId: number,
    private readonly before: RecordedBefore,
    private readonly stored: Map<string, HeadsBucket>,
  ) {}

  add(chainKey: string, position: string, hash: string): void {
    const recorded = this.before.get(chainKey);
    if (recorded === null) return; // new with this copy
    if (recorded) this.bucketer.add(chainKey, Number(recorded.position), recorded.hash);
    else this.bucketer.add(chainKey, Number(position), hash);
  }

  /** Throws unless every bucket (of `buckets`, or every one stored or hashed) is as stored. */
  finish(buckets?: string[]): void {
    this.bucketer.flush();
    for (const bucket of buckets ?? new Set([...this.stored.keys(), ...this.hashed.keys()])) {
      const [was, stored] = [this.hashed.get(bucket), this.stored.get(bucket)];
      if (was?.digest !== stored?.digest || was?.chains !== stored?.chains || was?.events !== stored?.events) {
        throw new CheckpointedHeadsChangedError(
          this.lastId,
          `bucket ${JSON.stringify(bucket)} of the recorded heads no longer hashes to its stored digest`,
        );
      }
    }
  }
}

/** A digest of the checkpointed heads: how many, the events they hold, and the digest itself. */
export interface CheckpointedHeads {
  chains: number;
  events: number;
  digest: string;
}

/**
 * The digest of every checkpointed head, recomputed from the heads themselves in the format of
 * the checkpoint it is to be compared with (the verifier's check; format 1 for checkpoints
 * written before 0.12.0).
 */
export async function digestCheckpointedHeads(em: EntityManager, format: 'v1' | 'v2'): Promise<CheckpointedHeads> {
  if (format === 'v1') {
    const digest = new HeadsDigest();
    await streamCheckpointedHeads(em, async (rows) => {
      for (const r of rows) digest.add(r.chain_key, Number(r.position), r.hash);
    });
    return { chains: digest.chains, events: digest.events, digest: digest.digest() };
  }
  const tree = new HeadsTreeDigest();
  await streamCheckpointedHeads(em, async (rows) => {
    for (const r of rows) tree.add(r.chain_key, Number(r.position), r.hash);
  });
  return tree.finish();
}

interface HeadRow {
  chain_key: string;
  position: string;
  hash: string;
}

/** Every checkpointed head in key order, handed over a batch at a time through a cursor (bounded memory). */
async function streamCheckpointedHeads(em: EntityManager, onBatch: (rows: HeadRow[]) => Promise<void>): Promise<void> {
  // A cursor needs one connection and a transaction (both callers run in one).
  if (!em.queryRunner?.isTransactionActive) throw new Error('streamCheckpointedHeads must run inside a transaction');
  // One ordered scan of every head, handed over a batch at a time (bounded memory). Planned for
  // the whole result (a cursor's default plans for its first tenth): a sequential scan and a
  // sort, where walking the key's index fetched each head from a random page (1.2 s of a
  // checkpoint at 100k chains, measured; this transaction plans nothing else after it).
  await sql(em, `SET LOCAL cursor_tuple_fraction = 1`);
  await sql(
    em,
    `DECLARE sessionary_heads_digest NO SCROLL CURSOR FOR
       SELECT chain_key, position::text AS position, hash FROM audit_checkpoint_heads ORDER BY chain_key`,
  );
  try {
    for (;;) {
      const { rows } = await sql<HeadRow>(em, `FETCH ${HEADS_BATCH} FROM sessionary_heads_digest`);
      await onBatch(rows);
      if (rows.length < HEADS_BATCH) return;
    }
  } finally {
    await sql(em, `CLOSE sessionary_heads_digest`);
  }
}

/** Stores the given buckets' digests (the checkpoint job's own table: the tree's leaves, for the next checkpoint). */
async function storeBuckets(em: EntityManager, buckets: HeadsBucket[]): Promise<void> {
  if (!buckets.length) return;
  await sql(
    em,
    `INSERT INTO audit_checkpoint_buckets (bucket, chains, events, digest)
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[])
     ON CONFLICT (bucket) DO UPDATE SET chains = excluded.chains, events = excluded.events, digest = excluded.digest`,
    [buckets.map((b) => b.bucket), buckets.map((b) => b.chains), buckets.map((b) => b.events), buckets.map((b) => b.digest)],
  );
}

/** The root over every stored bucket digest, in key order (the column's "C" collation, as the heads' keys). */
async function rootOfStoredBuckets(em: EntityManager): Promise<CheckpointedHeads> {
  // Through a cursor, HEADS_BATCH buckets a fetch: all 65,536 read and hashed at once held this
  // process's event loop for about 100 ms (the slowest of the appends during a checkpoint, in
  // the audit bench), where each batch now holds it for a few.
  await sql(
    em,
    `DECLARE sessionary_buckets_root NO SCROLL CURSOR FOR
                   SELECT bucket, chains::text AS chains, events::text AS events, digest FROM audit_checkpoint_buckets ORDER BY bucket`,
  );
  const root = new HeadsRoot();
  try {
    for (;;) {
      const { rows } = await sql<{ bucket: string; chains: string; events: string; digest: string }>(
        em,
        `FETCH ${HEADS_BATCH} FROM sessionary_buckets_root`,
      );
      for (const r of rows) root.add({ bucket: r.bucket, chains: Number(r.chains), events: Number(r.events), digest: r.digest });
      if (rows.length < HEADS_BATCH) break;
    }
  } finally {
    await sql(em, `CLOSE sessionary_buckets_root`);
  }
  return { chains: root.chains, events: root.events, digest: root.digest() };
}
