import { Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { DataSource, EntityManager, QueryRunner } from 'typeorm';
import type { AppConfig } from '../config/config';
import { rowsOf, sql } from '../database/sql';
import { pgClientOf } from '../database/stream-rows';
import { Checkpoint, checkpointMac, GENESIS_HASH, sameMac } from './audit-chain';
import { type CheckpointFileDamage, readCheckpointFile } from './checkpoint-file';
import { CHECKPOINT_COLUMNS, type CheckpointRow, digestCheckpointedHeads, toCheckpoint } from './audit-chain.service';
import { isHeadsDigestV2 } from './checkpoint-heads-digest';
import { readSeqSequence } from './seq-sequence';
import { AuditBaseSets, type BaseSet } from './audit-base-sets';
import { startAuditSnapshot } from './audit-snapshot';
import {
  breaksFirst,
  type PassBreak,
  type PassInput,
  PENDING_LIMIT,
  type PassRange,
  type PassResult,
  runVerifyPass,
  VERIFY_PASS_SETTINGS,
} from './audit-verify-pass';
import type { VerifyWorkerData, VerifyWorkerReply } from './audit-verify.worker';

/** CHK_audit_events_chain as AuditPartitions made it (pg_get_constraintdef's form; compared without spacing and parentheses). */
const CHAIN_CONSTRAINT =
  'CHECK ((((chain_key IS NULL) AND (chain_pos IS NULL) AND (prev_hash IS NULL) AND (hash IS NULL)) OR ' +
  '((chain_key IS NOT NULL) AND (chain_pos >= 1) AND (prev_hash IS NOT NULL) AND (hash IS NOT NULL))))';

function comparableDefinition(definition: string): string {
  return definition.replace(/[\s()"]/g, '').toLowerCase();
}

/** Rows per query: large enough that a query's fixed cost (planning across the partitions) is small per row. */
const BATCH = 5000;

export interface AuditVerification {
  ok: boolean;
  /** Events read from the chains: all of them (the passes run to their end); in a broken chain, those after its break are read but not checked. */
  checked: number;
  /** The first broken event in chain order (chains by key, then position); null when none or when no stored event is to blame (a deleted tail). */
  firstBrokenId: string | null;
  reason: string | null;
  chains: number;
  /** The latest checkpoint in the table, when there is one. */
  checkpointId: number | null;
  /** The checkpoint read from the given file, when one was given: its last line that is one. */
  fileCheckpointId: number | null;
  /** The lines after that checkpoint that are not checkpoints (a damaged tail; the log is then BROKEN), or null. */
  fileDamaged: CheckpointFileDamage | null;
  /** Events before the chains' bases: in months dropped by retention (archived, when configured). */
  dropped: number;
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
 * Checks every chain, in passes over ranges of chain keys run side by side on worker threads
 * (AUDIT_VERIFY_WORKERS), each pass one sequential scan of the events with its chains' state in
 * memory (see runVerifyPass), all in one read-only snapshot exported by this service's own
 * transaction: recomputes each event's HMAC and link, checks that positions are contiguous, that
 * each chain ends at its head, that the chains' bases are the authentic set, that every
 * checkpoint is authentic and linked, that the latest one matches the heads it recorded, and,
 * given an exported checkpoint file, that its last line is in the table and still matches.
 */
@Injectable()
export class AuditVerifierService {
  private readonly logger = new Logger(AuditVerifierService.name);
  private readonly key: string;
  private readonly workers: number;
  private readonly chainsPerPass: number;
  private readonly connectionString: string;
  /**
   * Below this many events (the heads' positions added up) the passes run on this thread: a
   * worker's start (its modules, its connection) costs more than it saves. Tests lower it.
   */
  minEventsForWorkers = 100_000;
  /** The early rows a pass may hold before it defers a chain (see runVerifyPass). Tests lower it. */
  pendingLimit = PENDING_LIMIT;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly bases: AuditBaseSets,
    config: ConfigService<AppConfig, true>,
  ) {
    this.key = config.get('AUDIT_HMAC_KEY', { infer: true });
    this.workers = config.get('AUDIT_VERIFY_WORKERS', { infer: true });
    this.chainsPerPass = config.get('AUDIT_VERIFY_CHAINS_PER_PASS', { infer: true });
    this.connectionString = (dataSource.options as { url: string }).url;
  }

  /** The verification running for requests, if any, and the one that will follow it. */
  private running: Promise<AuditVerification> | undefined;
  private following: Promise<AuditVerification> | undefined;

  /**
   * verify() for requests (GET /admin/audit/verify): at most one runs on this instance. Each
   * holds a pooled connection, opens up to AUDIT_VERIFY_WORKERS more outside the pool and scans
   * the whole log, so twenty at once (a dashboard polling, a script, a stolen admin token) took
   * the pool from every other request. A request that comes while one runs waits for the next
   * one, which every request arriving meanwhile shares: each answer is still from a snapshot
   * taken after its request came (a run already under way may predate a tampering the caller
   * is checking for), and no more than two runs' time is waited.
   */
  verifyOneAtATime(): Promise<AuditVerification> {
    if (!this.running) return this.startRun();
    this.following ??= this.running
      .catch(() => undefined)
      .then(() => {
        this.following = undefined;
        return this.startRun();
      });
    return this.following;
  }

  private startRun(): Promise<AuditVerification> {
    const run: Promise<AuditVerification> = this.verify().finally(() => {
      if (this.running === run) this.running = undefined;
    });
    this.running = run;
    return run;
  }

  async verify(options: { checkpointFile?: string } = {}): Promise<AuditVerification> {
    // Read the file first: a missing or unreadable file, or one without a checkpoint, is the
    // operator's error, not a broken log.
    const fileTail = options.checkpointFile ? await readCheckpointFile(options.checkpointFile) : undefined;
    const fileCheckpoint = fileTail?.checkpoint;
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
      fileDamaged: fileTail?.damaged ?? null,
      dropped: 0,
    };
    try {
      await startAuditSnapshot(runner);
      await sql(runner.manager, 'SET TRANSACTION READ ONLY');
      for (const setting of VERIFY_PASS_SETTINGS) await sql(runner.manager, setting);
      const em = runner.manager;
      const baseSet = await this.bases.inForce(em);
      if (baseSet && !this.bases.isAuthentic(baseSet)) {
        throw new Broken(
          null,
          `The chains' bases of ${baseSet.month} (where they start after dropped months) do not match their MAC: they were altered`,
        );
      }
      await this.walkChains(runner, baseSet, result);
      if (baseSet) await this.checkBaseSet(em, baseSet);
      await this.findUnsealed(em);
      await this.checkCheckpoints(em, result, fileCheckpoint);
      if (fileTail?.damaged) throw new Broken(null, damagedTailReason(fileTail.checkpoint, fileTail.damaged));
    } catch (error) {
      if (!(error instanceof Broken)) throw error;
      Object.assign(result, { ok: false, firstBrokenId: error.eventId, reason: error.reason });
    } finally {
      if (runner.isTransactionActive) await runner.rollbackTransaction();
      await runner.release();
    }
    return result;
  }

  /** Runs the passes and adds up what they found; the first break in chain order is thrown. */
  private async walkChains(runner: QueryRunner, baseSet: BaseSet | undefined, result: AuditVerification): Promise<void> {
    const [{ chains, events }] = await rowsOf<{ chains: number; events: number }>(
      runner.manager,
      `SELECT count(*)::int AS chains, COALESCE(sum(position), 0)::float8 AS events FROM audit_chain_heads`,
    );
    const workers = events >= this.minEventsForWorkers ? this.workers : 0;
    const ranges = await this.passRanges(runner.manager, chains, workers);
    const checkpointMaxSeq = await this.settledCheckpointSeq(runner.manager);
    const sequenceSetBack = await this.sequenceSetBack(runner.manager, checkpointMaxSeq);
    const passes: PassInput[] = ranges.map((r) => ({
      ...r,
      key: this.key,
      baseMonth: baseSet?.month ?? null,
      pendingLimit: this.pendingLimit,
      checkpointMaxSeq,
    }));
    const results = workers > 0 ? await this.inWorkers(runner.manager, passes, workers) : await this.inProcess(runner, passes);
    let broken: PassBreak | null = null;
    for (const r of results) {
      result.checked += r.checked;
      result.chains += r.chains;
      result.dropped += r.dropped;
      if (r.broken) broken = broken ? breaksFirst(broken, r.broken) : r.broken;
    }
    // An event with a seq out of its place is also what a sequence set back leaves: both are
    // said. Whatever else is broken is reported as it is (a sequence set back after tampering
    // hides nothing). An intact log with a sequence behind (a copy never written to) is intact;
    // its next writes would not be, so it is logged.
    if (broken) {
      throw new Broken(
        broken.eventId,
        broken.kind === 'seq' && sequenceSetBack
          ? `${broken.reason}, or written while the seq sequence was behind: ${sequenceSetBack}`
          : broken.reason,
      );
    }
    if (sequenceSetBack) this.logger.warn(`Audit verification: the log is intact, but ${sequenceSetBack}`);
  }

  /**
   * The latest checkpoint's maxSeq when the passes can rely on it: an authentic checkpoint of
   * format 2, whose maxSeq is a settled seq (every event up to it was in the heads it recorded).
   * Null otherwise: no checkpoint, one of format 1 (its maxSeq was read, not settled), or one
   * that does not match its MAC (checkCheckpoints reports that after the walk).
   */
  private async settledCheckpointSeq(em: EntityManager): Promise<string | null> {
    const [row] = await rowsOf<CheckpointRow>(em, `SELECT ${CHECKPOINT_COLUMNS} FROM audit_checkpoints c ORDER BY c.id DESC LIMIT 1`);
    if (!row) return null;
    const { mac, ...fields } = toCheckpoint(row);
    return isHeadsDigestV2(fields.digest) && sameMac(mac, checkpointMac(this.key, fields)) ? fields.maxSeq : null;
  }

  /**
   * Why the seqs' sequence is behind, or null: it has handed out less than the greatest seq in
   * the table or than the latest checkpoint covers. It was set back (a restore, or a major
   * upgrade by logical replication, which does not carry sequences): the events written since
   * have seqs from below, and read as inserted out of their place (see readSeqSequence; not
   * checked by a role that may not read it).
   */
  private async sequenceSetBack(em: EntityManager, checkpointMaxSeq: string | null): Promise<string | null> {
    const sequence = await readSeqSequence(em);
    if (!sequence) return null;
    const checkpointed = checkpointMaxSeq === null ? 0n : BigInt(checkpointMaxSeq);
    const needed = checkpointed > sequence.greatestSeq ? checkpointed : sequence.greatestSeq;
    if (sequence.handedOut >= needed) return null;
    return (
      `the sequence of the events' seqs has handed out ${sequence.handedOut}, less than ` +
      (needed === sequence.greatestSeq ? `the greatest seq in the log (${needed})` : `the latest checkpoint covers (seq ${needed})`) +
      `: it was set back (after a restore or an upgrade by logical replication, set it past ${needed} with setval before the service writes)`
    );
  }

  /**
   * The passes' key ranges: enough that none holds more than AUDIT_VERIFY_CHAINS_PER_PASS
   * chains, and as many for each worker (at 1,000,001 chains and two workers, three passes
   * left one worker two thirds of the work: 68k events/s at 50M; four even ones do better,
   * although each is one more scan of the table); split where the heads' keys fall into equal tiles.
   */
  private async passRanges(em: EntityManager, chains: number, workers: number): Promise<PassRange[]> {
    const lanes = Math.max(workers, 1);
    const count = lanes * Math.ceil(Math.max(1, Math.ceil(chains / this.chainsPerPass)) / lanes);
    if (count === 1 || chains < count) return [{ from: null, to: null }];
    const starts = await rowsOf<{ key: string }>(
      em,
      `SELECT min(chain_key) AS key FROM (SELECT chain_key, ntile($1) OVER (ORDER BY chain_key) AS tile FROM audit_chain_heads) t
        GROUP BY tile ORDER BY tile`,
      [count],
    );
    const bounds = starts.slice(1).map((s) => s.key);
    return [null, ...bounds].map((from, i) => ({ from, to: bounds[i] ?? null }));
  }

  /** The passes on this connection and thread, one after another (AUDIT_VERIFY_WORKERS=0). */
  private async inProcess(runner: QueryRunner, passes: PassInput[]): Promise<PassResult[]> {
    const client = pgClientOf(runner.manager);
    const results: PassResult[] = [];
    for (const pass of passes) results.push(await runVerifyPass(client, pass));
    return results;
  }

  /** The passes on worker threads, dealt out in turn, each worker on its own connection in this transaction's snapshot. */
  private async inWorkers(em: EntityManager, passes: PassInput[], workers: number): Promise<PassResult[]> {
    const [{ snapshot }] = await rowsOf<{ snapshot: string }>(em, `SELECT pg_export_snapshot() AS snapshot`);
    const shares = Array.from({ length: Math.min(workers, passes.length) }, (_, w) => passes.filter((_, i) => i % workers === w));
    const started: Worker[] = [];
    try {
      const replies = await Promise.all(
        shares.map(
          (share) =>
            new Promise<PassResult[]>((resolve, reject) => {
              const worker = this.startWorker({ connectionString: this.connectionString, snapshot, passes: share });
              started.push(worker);
              worker.once('message', (reply: VerifyWorkerReply) => {
                if ('results' in reply) resolve(reply.results);
                // Rebuilt with its code, so that an unavailable database is still told apart (503).
                else reject(Object.assign(new Error(reply.error.message), reply.error.code ? { code: reply.error.code } : {}));
              });
              worker.once('error', reject);
              worker.once('exit', (code) => reject(new Error(`an audit verification worker stopped (exit code ${code})`)));
            }),
        ),
      );
      return replies.flat();
    } catch (error) {
      // One failure fails the verification: the others would otherwise scan on to the end of
      // their passes (minutes at 50M events), each on a connection whose old snapshot holds
      // back the checkpoints' settled seq and the exports after a seq.
      await Promise.all(started.map((worker) => worker.terminate()));
      throw error;
    }
  }

  /** A worker thread running the given passes (a method of its own so that a test can stand in for it). */
  protected startWorker(data: VerifyWorkerData): Worker {
    return new Worker(join(__dirname, 'audit-verify.worker.js'), { workerData: data });
  }

  /** The base set in force holds exactly the rows its MAC'd digest was made over (read in key order). */
  private async checkBaseSet(em: EntityManager, set: BaseSet): Promise<void> {
    const digest = await this.bases.digest(em, set.month);
    if (digest.chains !== set.chains || !sameMac(set.digest, digest.digest())) {
      throw new Broken(
        null,
        `The chains' bases of ${set.month} (${digest.chains} read, ${set.chains} prepared) do not match their digest: bases were altered, deleted or inserted`,
      );
    }
  }

  private async findUnsealed(em: EntityManager): Promise<void> {
    // The passes read the chains (chain_key >= ''), and this the rows without a hash: a row with
    // a hash and no chain key is in neither, which only the constraint that an event has all its
    // chain fields or none rules out. Dropped, or put back NOT VALID over such a row, it is
    // reported here (until 0.23.0 such a row went unseen: indexing `chain_key IS NULL` for a
    // search would cost every event's write, and the constraint's state costs one catalog read).
    const [constraint] = await rowsOf<{ valid: boolean; definition: string }>(
      em,
      `SELECT convalidated AS valid, pg_get_constraintdef(oid) AS definition FROM pg_constraint
        WHERE conrelid = 'audit_events'::regclass AND conname = 'CHK_audit_events_chain'`,
    );
    if (!constraint?.valid || comparableDefinition(constraint.definition) !== comparableDefinition(CHAIN_CONSTRAINT)) {
      throw new Broken(
        null,
        'The constraint CHK_audit_events_chain (an event has all its chain fields or none) is missing, altered or not validated: ' +
          'events outside every chain cannot be ruled out. It was changed outside the service',
      );
    }
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
        // The first checkpoint is id 1 after the genesis MAC (none is ever removed): without
        // this, deleting the oldest ones went unseen.
        const expectedId = latest ? latest.id + 1 : 1;
        const expectedPrevMac = latest ? latest.mac : GENESIS_HASH;
        if (checkpoint.id !== expectedId || !sameMac(checkpoint.prevMac, expectedPrevMac)) {
          throw new Broken(
            null,
            latest
              ? `Checkpoint ${checkpoint.id} does not follow checkpoint ${latest.id}: checkpoints were deleted`
              : `Checkpoint ${checkpoint.id} is the first in the table, not checkpoint 1: checkpoints were deleted`,
          );
        }
        // A checkpoint's heads only move forward from the last one's (chains are never removed,
        // positions never go back, retention included): fewer is heads set back before it was
        // written (a writer before 0.23.0 stated them so).
        if (latest && (checkpoint.events < latest.events || checkpoint.chains < latest.chains)) {
          throw new Broken(
            null,
            `Checkpoint ${checkpoint.id} states ${checkpoint.chains} chains and ${checkpoint.events} events, fewer than checkpoint ` +
              `${latest.id}'s ${latest.chains} and ${latest.events}: events the earlier checkpoint covered were deleted`,
          );
        }
        latest = checkpoint;
      }
      if (rows.length < BATCH) break;
      afterId = latest!.id;
    }
    result.checkpointId = latest?.id ?? null;
    // Recomputed from the heads in the format the latest checkpoint states (format 1 before 0.12.0).
    const heads = await digestCheckpointedHeads(em, latest && !isHeadsDigestV2(latest.digest) ? 'v1' : 'v2');
    if (!latest) {
      if (heads.chains)
        throw new Broken(null, 'The checkpointed chain heads record a checkpoint, but the checkpoint table is empty: checkpoints were deleted');
    } else if (heads.digest !== latest.digest || heads.chains !== latest.chains || heads.events !== latest.events) {
      throw new Broken(
        null,
        `The checkpointed chain heads do not match checkpoint ${latest.id} (${latest.chains} chains, ${latest.events} events): heads or checkpoints were altered`,
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

/**
 * Why a checkpoint file whose last lines are not checkpoints makes the verification BROKEN, not
 * intact with a warning: those lines held the newest checkpoints the file recorded (the file's
 * point is its last one), and the verification could only use an older one, so events deleted
 * after it, with the checkpoints that recorded them, would go unseen; an exit code 0 then let
 * anyone able to write the file switch its newest evidence off by garbling one line. The file
 * is part of what `--checkpoint-file` verifies (a line altered is already BROKEN, by its MAC).
 * Yet a crash mid-append (the service killed, the disk full) leaves such a line with no one at
 * fault, so the reason says so, and what to look at.
 */
function damagedTailReason(last: Checkpoint, damaged: CheckpointFileDamage): string {
  const lines = damaged.lines === 1 ? '1 line' : `${damaged.lines} lines`;
  return (
    `The checkpoint file ends with ${lines} (${damaged.bytes} bytes${damaged.unterminated ? ', without a final newline' : ''}) after ` +
    `checkpoint ${last.id} that ${damaged.lines === 1 ? 'is not a checkpoint' : 'are not checkpoints'}: the newest checkpoints it recorded ` +
    `cannot be compared with the table (everything else was verified, against checkpoint ${last.id}). A checkpoint cut short as it was ` +
    'appended (the service stopped or the disk filled mid-append) leaves this as well as an edit of the file does: compare the damaged ' +
    "text with the service's audit.checkpoint log lines of that time, and keep the file as evidence"
  );
}
