import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { open } from 'node:fs/promises';
import { DataSource, EntityManager } from 'typeorm';
import type { AppConfig } from '../config/config';
import { rowsOf, sql } from '../database/sql';
import {
  ChainListDigest,
  chainedEventOf,
  chainKeyOf,
  Checkpoint,
  checkpointMac,
  matchesEventHash,
  GENESIS_HASH,
  sameMac,
  STORED_EVENT_COLUMNS,
  type StoredEventRow,
} from './audit-chain';
import { CHECKPOINT_COLUMNS, type CheckpointRow, digestCheckpointedHeads, toCheckpoint } from './audit-chain.service';
import { AuditBaseSets, type BaseSet, type ChainBase, legacyBaseMac } from './audit-base-sets';

/** Rows per query: large enough that a query's fixed cost (planning across the partitions) is small per row. */
const BATCH = 5000;
/** The last line of a checkpoint file is looked for in its last 64 KiB (one line is about 400 bytes). */
const FILE_TAIL_BYTES = 65_536;

export interface AuditVerification {
  ok: boolean;
  /** Events whose hash and link were checked (up to the first broken one). */
  checked: number;
  /** The first broken event in chain order (chains by key, then position); null when none or when no stored event is to blame (a deleted tail). */
  firstBrokenId: string | null;
  reason: string | null;
  chains: number;
  /** The latest checkpoint in the table, when there is one. */
  checkpointId: number | null;
  /** The checkpoint read from the given file, when one was given. */
  fileCheckpointId: number | null;
  /** Events before the chains' bases: in months dropped by retention (archived, when configured). */
  dropped: number;
}

interface EventRow extends StoredEventRow {
  chain_key: string;
  chain_pos: string;
  prev_hash: string;
  hash: string;
}

interface HeadRow {
  chain_key: string;
  position: string;
  hash: string;
  checkpoint_position: string | null;
  checkpoint_hash: string | null;
  /** Where the chain starts once the months before it were dropped by 0.8.0 (before base sets). */
  base_position: string | null;
  base_hash: string | null;
  base_mac: string | null;
}

class Broken extends Error {
  constructor(
    readonly eventId: string | null,
    readonly reason: string,
  ) {
    super(reason);
  }
}

/**
 * Reads a keyset-paginated query one row at a time. The next batch is asked for as soon as
 * one arrives, so PostgreSQL reads it while this process checks the current one (on the same
 * connection and snapshot: the queries queue there).
 */
class Cursor<T> {
  private rows: T[] = [];
  private index = 0;
  private pending: Promise<T[]> | undefined;
  private done = false;

  constructor(private readonly fetch: (last: T | undefined) => Promise<T[]>) {
    this.pending = this.prefetch(undefined);
  }

  async next(): Promise<T | undefined> {
    if (this.index === this.rows.length) {
      if (this.done || !this.pending) return undefined;
      this.rows = await this.pending;
      this.index = 0;
      this.pending = undefined;
      if (this.rows.length < BATCH) this.done = true;
      else this.pending = this.prefetch(this.rows[this.rows.length - 1]);
    }
    return this.index < this.rows.length ? this.rows[this.index++] : undefined;
  }

  private prefetch(last: T | undefined): Promise<T[]> {
    const batch = this.fetch(last);
    // A walk that stops early (a broken chain) never awaits its last prefetch: its failure is
    // not the walk's and must not surface as an unhandled rejection.
    batch.catch(() => undefined);
    return batch;
  }
}

/**
 * Walks every chain in key and position order, a batch at a time (bounded memory), in one
 * read-only snapshot: recomputes each event's HMAC and link, checks that positions are
 * contiguous, that each chain ends at its head, that every checkpoint is authentic and linked,
 * that the latest one matches the heads it recorded, and, given an exported checkpoint file,
 * that its last line is in the table and still matches.
 */
@Injectable()
export class AuditVerifierService {
  private readonly key: string;

  constructor(
    @InjectDataSource() private readonly dataSource: DataSource,
    private readonly bases: AuditBaseSets,
    config: ConfigService<AppConfig, true>,
  ) {
    this.key = config.get('AUDIT_HMAC_KEY', { infer: true });
  }

  async verify(options: { checkpointFile?: string } = {}): Promise<AuditVerification> {
    // Read the file first: a missing or unreadable file is the operator's error, not a broken log.
    const fileCheckpoint = options.checkpointFile ? await readLastCheckpoint(options.checkpointFile) : undefined;
    const runner = this.dataSource.createQueryRunner();
    await runner.connect();
    const result: AuditVerification = {
      ok: true,
      checked: 0,
      firstBrokenId: null,
      reason: null,
      chains: 0,
      checkpointId: null,
      fileCheckpointId: fileCheckpoint?.id ?? null,
      dropped: 0,
    };
    try {
      await runner.startTransaction('REPEATABLE READ');
      await sql(runner.manager, 'SET TRANSACTION READ ONLY');
      const em = runner.manager;
      await this.walkChains(em, result);
      await this.findUnsealed(em);
      await this.checkCheckpoints(em, result, fileCheckpoint);
    } catch (error) {
      if (!(error instanceof Broken)) throw error;
      Object.assign(result, { ok: false, firstBrokenId: error.eventId, reason: error.reason });
    } finally {
      if (runner.isTransactionActive) await runner.rollbackTransaction();
      await runner.release();
    }
    return result;
  }

  private async walkChains(em: EntityManager, result: AuditVerification): Promise<void> {
    const events = new Cursor<EventRow>((last) =>
      rowsOf<EventRow>(
        em,
        `SELECT ${STORED_EVENT_COLUMNS},
                chain_key, chain_pos::text AS chain_pos, prev_hash, hash
           FROM audit_events e WHERE (e.chain_key, e.chain_pos) > ($1, $2::bigint)
          ORDER BY e.chain_key, e.chain_pos LIMIT $3`,
        [last?.chain_key ?? '', last?.chain_pos ?? '0', BATCH],
      ),
    );
    const heads = new Cursor<HeadRow>((last) =>
      rowsOf<HeadRow>(
        em,
        `SELECT chain_key, position::text AS position, hash, checkpoint_position::text AS checkpoint_position, checkpoint_hash,
                base_position::text AS base_position, base_hash, base_mac
           FROM audit_chain_heads h WHERE h.chain_key > $1 ORDER BY h.chain_key LIMIT $2`,
        [last?.chain_key ?? '', BATCH],
      ),
    );
    const baseSet = await this.bases.inForce(em);
    if (baseSet && !this.bases.isAuthentic(baseSet)) {
      throw new Broken(
        null,
        `The chains' bases of ${baseSet.month} (where they start after dropped months) do not match their MAC: they were altered`,
      );
    }
    const bases = baseSet ? new Cursor<ChainBase>((last) => this.bases.rows(em, baseSet.month, last?.chain_key ?? '', BATCH)) : undefined;
    const basesDigest = new ChainListDigest('sessionary.audit.bases.v1');
    let base = await bases?.next();
    let event = await events.next();
    let head = await heads.next();
    /** Where a head's chain starts: its row in the base set in force, or (none in force) its 0.8.0 base, or its beginning. */
    const startOf = async (h: HeadRow): Promise<{ position: number; hash: string }> => {
      if (base && base.chain_key < h.chain_key) {
        throw new Broken(null, `Chain ${base.chain_key} has a base but no head: its head was deleted, or the base inserted`);
      }
      if (base && base.chain_key === h.chain_key) {
        const start = { position: Number(base.position), hash: base.hash };
        basesDigest.add(base.chain_key, start.position, start.hash);
        base = await bases!.next();
        return start;
      }
      return baseSet ? { position: 0, hash: GENESIS_HASH } : this.legacyBaseOf(h);
    };
    while (event || head) {
      if (head && (!event || head.chain_key < event.chain_key)) {
        const start = await startOf(head);
        result.dropped += start.position;
        if (Number(head.position) > start.position) {
          throw new Broken(null, `Chain ${head.chain_key} has no events, but its head is at position ${head.position}: its events were deleted`);
        }
        if (Number(head.position) < start.position || !sameMac(head.hash, start.hash)) {
          throw new Broken(
            null,
            `Chain ${head.chain_key} has no events, and its head is not where its base says it ends: the head or the base was altered`,
          );
        }
        head = await heads.next();
        continue;
      }
      if (!head || event!.chain_key < head.chain_key) {
        result.checked++;
        throw new Broken(event!.id, `Event ${event!.id} is in chain ${event!.chain_key}, which has no head: it was inserted or moved`);
      }
      result.chains++;
      const chainKey = head.chain_key;
      const start = await startOf(head);
      result.dropped += start.position;
      let position = start.position;
      let prevHash = start.hash;
      let lastId: string | null = null;
      while (event && event.chain_key === chainKey) {
        result.checked++;
        this.checkEvent(event, position, prevHash);
        position = Number(event.chain_pos);
        prevHash = event.hash;
        lastId = event.id;
        event = await events.next();
      }
      const after = lastId ? `after event ${lastId}` : 'from its start';
      const checkpointPosition = head.checkpoint_position === null ? null : Number(head.checkpoint_position);
      if (checkpointPosition !== null && position < checkpointPosition) {
        throw new Broken(
          null,
          `Chain ${chainKey} ends at position ${position}, but a checkpoint recorded position ${checkpointPosition}: events ${after} were deleted`,
        );
      }
      if (checkpointPosition !== null && position === checkpointPosition && !sameMac(head.checkpoint_hash, prevHash)) {
        throw new Broken(lastId, `Chain ${chainKey}: the event at the checkpointed position ${position} is not the one the checkpoint recorded`);
      }
      if (String(position) !== head.position || !sameMac(head.hash, prevHash)) {
        throw new Broken(
          null,
          `Chain ${chainKey} ends at position ${position}, but its head is at position ${head.position}: events ${after} were deleted, or the head was altered`,
        );
      }
      head = await heads.next();
    }
    if (base) throw new Broken(null, `Chain ${base.chain_key} has a base but no head: its head was deleted, or the base inserted`);
    if (baseSet) this.checkBaseSet(baseSet, basesDigest);
  }

  /** The base set in force holds exactly the rows its MAC'd digest was made over. */
  private checkBaseSet(set: BaseSet, read: ChainListDigest): void {
    if (read.chains !== set.chains || !sameMac(set.digest, read.digest())) {
      throw new Broken(
        null,
        `The chains' bases of ${set.month} (${read.chains} read, ${set.chains} prepared) do not match their digest: bases were altered, deleted or inserted`,
      );
    }
  }

  /** Where a chain starts when 0.8.0 dropped the months before it: its authenticated base in its head, or its beginning. */
  private legacyBaseOf(head: HeadRow): { position: number; hash: string } {
    if (head.base_position === null) return { position: 0, hash: GENESIS_HASH };
    const position = Number(head.base_position);
    if (!sameMac(head.base_mac, legacyBaseMac(this.key, head.chain_key, position, head.base_hash ?? ''))) {
      throw new Broken(null, `Chain ${head.chain_key}: its base (where it starts after dropped months) does not match its MAC: it was altered`);
    }
    return { position, hash: head.base_hash! };
  }

  private checkEvent(event: EventRow, position: number, prevHash: string): void {
    const id = event.id;
    if (chainKeyOf(event.user_id) !== event.chain_key) {
      throw new Broken(id, `Event ${id} names user ${event.user_id ?? 'none'} but belongs to chain ${event.chain_key}: it was moved to another user`);
    }
    const at = Number(event.chain_pos);
    if (at !== position + 1) {
      throw new Broken(
        id,
        `Event ${id} is at position ${at} of chain ${event.chain_key}, where ${position + 1} was expected: events before it were deleted or moved`,
      );
    }
    if (event.prev_hash !== prevHash) {
      throw new Broken(
        id,
        `Event ${id} does not link to the event before it in chain ${event.chain_key}: events were deleted, inserted or reordered`,
      );
    }
    if (!matchesEventHash(this.key, event.hash, event.prev_hash, chainedEventOf(event, event.chain_key, at))) {
      throw new Broken(id, `Event ${id} does not match its hash: it was altered, or written without the key`);
    }
  }

  private async findUnsealed(em: EntityManager): Promise<void> {
    const [row] = await rowsOf<{ id: string }>(em, `SELECT id FROM audit_events WHERE hash IS NULL ORDER BY seq LIMIT 1`);
    if (row) throw new Broken(row.id, `Event ${row.id} is not in any chain: it was inserted outside the service (or not yet sealed)`);
  }

  private async checkCheckpoints(em: EntityManager, result: AuditVerification, fromFile: Checkpoint | undefined): Promise<void> {
    let latest: Checkpoint | undefined;
    let afterId = 0;
    for (;;) {
      const rows = await rowsOf<CheckpointRow>(em, `SELECT ${CHECKPOINT_COLUMNS} FROM audit_checkpoints c WHERE c.id > $1 ORDER BY c.id LIMIT $2`, [
        afterId,
        BATCH,
      ]);
      for (const row of rows) {
        const checkpoint = toCheckpoint(row);
        const { mac, ...fields } = checkpoint;
        if (!sameMac(mac, checkpointMac(this.key, fields)))
          throw new Broken(null, `Checkpoint ${checkpoint.id} does not match its MAC: it was altered or forged`);
        const expectedId = latest ? latest.id + 1 : checkpoint.id;
        if (checkpoint.id !== expectedId || (latest && checkpoint.prevMac !== latest.mac)) {
          throw new Broken(null, `Checkpoint ${checkpoint.id} does not follow checkpoint ${latest?.id}: checkpoints were deleted`);
        }
        latest = checkpoint;
      }
      if (rows.length < BATCH) break;
      afterId = latest!.id;
    }
    result.checkpointId = latest?.id ?? null;
    const heads = await digestCheckpointedHeads(em);
    if (!latest) {
      if (heads.chains) throw new Broken(null, 'The chain heads record a checkpoint, but the checkpoint table is empty: checkpoints were deleted');
    } else if (heads.digest() !== latest.digest || heads.chains !== latest.chains || heads.events !== latest.events) {
      throw new Broken(
        null,
        `The chain heads do not match checkpoint ${latest.id} (${latest.chains} chains, ${latest.events} events): heads or checkpoints were altered`,
      );
    }
    if (!fromFile) return;
    const { mac, ...fields } = fromFile;
    if (typeof mac !== 'string' || !sameMac(mac, checkpointMac(this.key, fields))) {
      throw new Broken(
        null,
        `The checkpoint file's last line (checkpoint ${fromFile.id}) does not match its MAC: the file was altered, or another key wrote it`,
      );
    }
    if (!latest || fromFile.id > latest.id) {
      throw new Broken(
        null,
        `Checkpoint ${fromFile.id} from the file is missing from the table (latest there: ${latest?.id ?? 'none'}): checkpoints and the events after them were deleted`,
      );
    }
    const [row] = await rowsOf<CheckpointRow>(em, `SELECT ${CHECKPOINT_COLUMNS} FROM audit_checkpoints c WHERE c.id = $1`, [fromFile.id]);
    if (!row || toCheckpoint(row).mac !== mac) {
      throw new Broken(null, `Checkpoint ${fromFile.id} from the file differs from the one in the table`);
    }
    if (result.checked + result.dropped < fromFile.events) {
      throw new Broken(
        null,
        `Checkpoint ${fromFile.id} from the file counted ${fromFile.events} events; only ${result.checked} remain` +
          (result.dropped ? ` besides ${result.dropped} in dropped months` : ''),
      );
    }
  }
}

/** The checkpoint file cannot be read or holds no checkpoint: the operator's error, not a broken log. */
export class CheckpointFileError extends Error {}

/** The last non-empty line of an NDJSON checkpoint file, reading only its tail. */
export async function readLastCheckpoint(path: string): Promise<Checkpoint> {
  let text: string;
  try {
    const file = await open(path, 'r');
    try {
      const { size } = await file.stat();
      const length = Math.min(size, FILE_TAIL_BYTES);
      const buffer = Buffer.alloc(length);
      await file.read(buffer, 0, length, size - length);
      text = buffer.toString('utf8');
    } finally {
      await file.close();
    }
  } catch (error) {
    throw new CheckpointFileError(`${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const last = lines[lines.length - 1];
  let parsed: unknown;
  try {
    parsed = last === undefined ? undefined : JSON.parse(last);
  } catch {
    parsed = undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || typeof (parsed as Checkpoint).id !== 'number') {
    throw new CheckpointFileError(`${path}: the last line is not a checkpoint`);
  }
  return parsed as Checkpoint;
}
