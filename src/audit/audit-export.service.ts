import { BadRequestException, HttpException, Injectable, Logger, ServiceUnavailableException } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import type { EventEmitter } from 'node:events';
import { Readable } from 'node:stream';
import { DataSource, QueryRunner } from 'typeorm';
import type { AppConfig } from '../config/config';
import { sql } from '../database/sql';
import { RetryAfterException } from '../common/retry-after.exception';
import { summarize } from '../database/database-outage.monitor';
import { STORED_EVENT_COLUMNS } from './audit-chain';
import { startAuditSnapshot } from './audit-snapshot';
import { ExportDigest, exportLineOf, ExportRow, ndjsonLine, sealFilterOf, sealOf } from './audit-export-format';
import { settledAuditSeq } from './settled-seq';
import type { AuditFilter } from './audit.service';

/** An export refused for being one too many: the others are usually done within seconds. */
const EXPORT_RETRY_AFTER_SECONDS = 10;

/**
 * How long an export after a seq waits for the transactions holding a seq when it starts to end
 * (settledAuditSeq) before it answers 503: writes of events, whose transactions last
 * milliseconds when they are the service's own.
 */
const SETTLE_TIMEOUT_MS = 10_000;

/** How openPiece finds where the log is settled (see there). */
export interface PieceOptions {
  signal?: AbortSignal;
  settledThrough?: string;
}

/** The events an export after a seq holds: seq in (after, through]. */
interface SeqRange {
  after: string;
  through: string;
  /** Whether settled events lie past `through`: a piece cut at its greatest size (openPiece). */
  more: boolean;
}

/** An export after a seq whose wait for the log to settle was cut short by its caller's signal (the shipping task at shutdown). */
export class AuditExportStopped extends ServiceUnavailableException {
  constructor() {
    super('The audit export was stopped');
  }
}

/** What pg_stat_activity shows for an export's connection while it runs (SET LOCAL: the pooled connection gets its name back). */
export const EXPORT_APPLICATION_NAME = 'sessionary-audit-export';

/**
 * Writes the audit log, or the part of it a filter selects, as NDJSON (audit-export-format.ts):
 * the one producer of the admin export route and of `npm run cli -- audit-export`.
 *
 * One REPEATABLE READ, READ ONLY snapshot on a connection of its own, read through one cursor
 * in `seq` order, one batch fetched whenever the consumer wants more: memory holds about one
 * batch however large the range, and a slow reader slows the reads down rather than filling
 * memory.
 *
 * A cursor, not a query per batch: the range is read once. With keyset pagination (`seq >
 * last LIMIT n`), every batch started its plan again, and a plan that merges the months' `seq`
 * indexes read, in each month, every row from the last line to the filter's next match: for a
 * user's export, the whole of each month after the user's last event in it, again for every
 * batch (200k events of one user among 1.3M took 37 s; see the README's *Exports*). A filter
 * that no index serves in `seq` order (a user, a type) is read once, and sorted once if the
 * plan says so. The connection goes back to the pool however the stream ends: read to the end,
 * failed, or destroyed by its consumer (a client that went away).
 */
@Injectable()
export class AuditExportService {
  private readonly logger = new Logger(AuditExportService.name);
  private readonly key: string;
  /** Rows per query. A property so that a test can make a small export span many batches. */
  batchSize = 1000;
  /** See SETTLE_TIMEOUT_MS (a property so that a test can shorten it). */
  settleTimeoutMs = SETTLE_TIMEOUT_MS;
  private readonly maxConcurrent: number;
  /** Exports whose snapshot is open (until their stream is done, however it ends). */
  private active = 0;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    config: ConfigService<AppConfig, true>,
  ) {
    this.key = config.get('AUDIT_HMAC_KEY', { infer: true });
    this.maxConcurrent = config.get('AUDIT_EXPORT_MAX_CONCURRENT', { infer: true });
  }

  /**
   * Opens an export, or refuses it with a 429 when AUDIT_EXPORT_MAX_CONCURRENT are already
   * streaming from this instance: each holds a pooled connection for as long as its client
   * reads, and enough slow clients would otherwise take the pool from every other request.
   */
  async open(filter: AuditFilter, afterSeq?: string, { stillAllowed }: { stillAllowed?: () => Promise<void> } = {}): Promise<Readable> {
    return (await this.start(filter, afterSeq, undefined, {}, stillAllowed)).lines;
  }

  /**
   * The next piece of the whole log (the shipping task's): an export after `afterSeq` (see
   * open) of at most `maxEvents` events, with the seq it runs through, known before its first
   * byte (the seal's `throughSeq`), and whether settled events lie past it (`more`: ship the
   * next piece at once). `settledThrough`: a seq the caller already had from settledAuditSeq
   * (the piece then runs through it at most, without waiting again); `signal` cuts the wait short.
   */
  async openPiece(afterSeq: string, maxEvents: number, options: PieceOptions = {}): Promise<{ lines: Readable; throughSeq: string; more: boolean }> {
    const { lines, range } = await this.start({}, afterSeq, maxEvents, options);
    return { lines, throughSeq: range!.through, more: range!.more };
  }

  private async start(
    filter: AuditFilter,
    afterSeq: string | undefined,
    maxEvents?: number,
    options: PieceOptions = {},
    stillAllowed?: () => Promise<void>,
  ): Promise<{ lines: Readable; range: SeqRange | undefined }> {
    if (this.active >= this.maxConcurrent) {
      throw new RetryAfterException(
        EXPORT_RETRY_AFTER_SECONDS,
        `Too many audit exports in progress (at most ${this.maxConcurrent}); try again later`,
      );
    }
    this.active++;
    let stream: Readable | undefined;
    try {
      const range = afterSeq === undefined ? undefined : await this.seqRangeAfter(afterSeq, maxEvents, options);
      stream = await this.openStream(filter, range, () => this.active--, stillAllowed);
      return { lines: stream, range };
    } finally {
      if (!stream) this.active--;
    }
  }

  /**
   * The range of an export after `afterSeq` (the incremental export): through the greatest seq
   * handed out, once every transaction that could still commit an event up to it has ended, so
   * that the snapshot taken next holds every event of the range that will ever exist, and the
   * next export, after this one's `throughSeq`, misses none and repeats none. (Without the wait,
   * an event whose transaction took its seq before a later one's and committed after it would
   * fall between two exports.) A seq past the greatest handed out is not from this log (another
   * database, or one restored from an older backup): a 400, rather than an empty file whose
   * next export would skip the events written until the sequence caught up.
   */
  private async seqRangeAfter(afterSeq: string, maxEvents: number | undefined, { signal, settledThrough }: PieceOptions): Promise<SeqRange> {
    const through = settledThrough ?? (await settledAuditSeq(this.dataSource.manager, this.settleTimeoutMs, signal));
    if (through === null) {
      // Cut short by its caller (the shipping task at shutdown): nothing to report.
      if (signal?.aborted) throw new AuditExportStopped();
      this.logger.warn(`An audit export after seq ${afterSeq} was refused: transactions were still running after ${this.settleTimeoutMs} ms`);
      throw new ServiceUnavailableException('The audit log is not settled yet; try again');
    }
    if (BigInt(afterSeq) > BigInt(through)) {
      throw new BadRequestException([`afterSeq ${afterSeq} is past the newest event's seq (${through}): it is not from this audit log`]);
    }
    if (maxEvents !== undefined) {
      // Cut at the maxEvents-th event: every event up to `through` is settled, so a later
      // snapshot (the export's) holds the same ones, and the next piece starts after the cut.
      // Without the pool's statement timeout, as the piece's own snapshot: the cut reads up to
      // AUDIT_SHIP_MAX_EVENTS (at most 10M) index entries, which a large first piece on a slow
      // disk could take past 15 s at every tick, and shipping would never move (until 0.24.2).
      const {
        rows: [cut],
      } = await this.dataSource.transaction(async (em) => {
        await sql(em, `SET LOCAL statement_timeout = 0`);
        return sql<{ seq: string }>(
          em,
          // By the months' seq indexes, merged (the bigint, not its text: "1899" < "999").
          `SELECT e.seq::text AS seq FROM audit_events e WHERE e.seq > $1::bigint AND e.seq <= $2::bigint ORDER BY e.seq OFFSET $3 LIMIT 1`,
          [afterSeq, through, maxEvents - 1],
        );
      });
      if (cut && BigInt(cut.seq) < BigInt(through)) return { after: afterSeq, through: cut.seq, more: true };
    }
    return { after: afterSeq, through, more: false };
  }

  /**
   * Opens the snapshot and reads the first batch before it returns, so that a database that
   * fails at the start fails the caller (a 503 before any byte of a response) rather than the
   * stream. After that, a failure destroys the stream: its consumer must not mistake the
   * lines so far for a whole export (and the missing seal says so to audit-verify --file).
   * `stillAllowed` is awaited before each batch after the first; when it throws (the session
   * that asked ended, or its admin was demoted), the stream is destroyed the same way.
   */
  private async openStream(
    filter: AuditFilter,
    range: SeqRange | undefined,
    onClosed: () => void,
    stillAllowed?: () => Promise<void>,
  ): Promise<Readable> {
    const batchSize = this.batchSize;
    const cursor = exportCursor(filter, range);
    const fetch = `FETCH FORWARD ${batchSize} FROM ${EXPORT_CURSOR}`;
    const snapshot = await Snapshot.open(this.dataSource);
    /** The first batch, read before any byte is sent; undefined once taken. */
    let prefetched: ExportRow[] | undefined;
    try {
      await snapshot.query(cursor.text, cursor.params);
      prefetched = await snapshot.query<ExportRow>(fetch, []);
    } catch (error) {
      await snapshot.close();
      throw error;
    }

    const digest = new ExportDigest();
    const sealFilter = sealFilterOf(filter, range?.after);
    /** The next chunk of lines, and whether it is the last (it then ends with the seal). */
    const nextChunk = async (): Promise<{ text: string; last: boolean }> => {
      if (!prefetched && stillAllowed) await stillAllowed();
      const rows = prefetched ?? (await snapshot.query<ExportRow>(fetch, []));
      prefetched = undefined;
      let text = '';
      for (const row of rows) {
        text += ndjsonLine(exportLineOf(row));
        digest.add(row.seq, row.hash);
      }
      if (rows.length === batchSize) return { text, last: false };
      return { text: text + ndjsonLine(sealOf(this.key, sealFilter, digest, range?.through)), last: true };
    };

    let reading: Promise<void> | undefined;
    /** Whether a FETCH is running now (the consumer asked for more and it has not come back yet). */
    let fetching = false;
    let closing: Promise<void> | undefined;
    /** Ends the transaction, gives the connection back and frees the export's slot, once. */
    const close = () => (closing ??= snapshot.close().finally(onClosed));
    const stream: Readable = new Readable({
      // Node asks for the next chunk only once the previous one was pushed: one query at a time.
      read: () => {
        fetching = true;
        reading = nextChunk().then(
          async ({ text, last }) => {
            fetching = false;
            if (stream.destroyed) return;
            // Before the last chunk goes out, not after the stream ends: a client that has its
            // seal finds the connection back in the pool and the export's slot free (it could
            // start the next export at once and be refused as one too many).
            if (last) await close().catch(() => undefined);
            if (stream.destroyed) return;
            stream.push(text);
            if (last) stream.push(null);
          },
          (error: unknown) => {
            fetching = false;
            if (stream.destroyed) return;
            if (error instanceof HttpException) {
              // Refused by stillAllowed: the session's end or its admin's demotion, not a failure.
              this.logger.warn(`Audit export stopped after ${digest.lines} lines: ${error.message} (the stream is destroyed, not ended)`);
            } else {
              const cause = summarize(snapshot.brokenBy ?? error);
              this.logger.error(`Audit export cut short after ${digest.lines} lines (the stream is destroyed, not ended): ${cause}`);
            }
            stream.destroy(error instanceof Error ? error : new Error(String(error)));
          },
        );
      },
      // Called once, whether the stream ended, failed or was destroyed by its consumer. A FETCH
      // still running is cancelled (it has no statement timeout, and may read far to fill its
      // batch for a client that is gone), then the transaction ends (unless the last chunk
      // ended it already): the connection runs one statement at a time. The ROLLBACK waits for
      // the cancel to be sent, so that a cancel that missed the FETCH lands while the connection
      // waits for its client (ignored there), not on the ROLLBACK (close() copes with that too).
      destroy: (error, callback) => {
        const cancelled = fetching ? snapshot.cancel(this.dataSource, this.logger) : undefined;
        void Promise.all([reading, cancelled])
          .catch(() => undefined)
          .then(close)
          .then(
            () => callback(error),
            (closeError: Error) => callback(error ?? closeError),
          );
      },
    });
    return stream;
  }
}

/** A read-only REPEATABLE READ transaction on a connection of its own. */
class Snapshot {
  /** Why the connection broke, if it did: TypeORM then releases the runner, and later queries say only that. */
  brokenBy: unknown;
  private readonly onError = (error: unknown) => (this.brokenBy ??= error);

  /** The server process of the transaction (from the server, not the driver: behind a pooler the driver's is the pooler's). */
  private pid: number | undefined;

  private constructor(
    private readonly runner: QueryRunner,
    private readonly connection: EventEmitter,
  ) {
    connection.on('error', this.onError);
  }

  static async open(dataSource: DataSource): Promise<Snapshot> {
    const runner = dataSource.createQueryRunner();
    let snapshot: Snapshot | undefined;
    try {
      snapshot = new Snapshot(runner, (await runner.connect()) as EventEmitter);
      await startAuditSnapshot(runner);
      await sql(runner.manager, 'SET TRANSACTION READ ONLY');
      await sql(runner.manager, `SET LOCAL application_name = '${EXPORT_APPLICATION_NAME}'`);
      // The pool's statement_timeout is for requests. A fetch may read far to fill its batch
      // (a sparse filter; or the first one, when the plan sorts the filter's events), and the
      // whole range is read once however long it takes, as the verifier's scan is.
      await sql(runner.manager, 'SET LOCAL statement_timeout = 0');
      const [{ pid }] = await snapshot.query<{ pid: number }>('SELECT pg_backend_pid() AS pid', []);
      snapshot.pid = pid;
      return snapshot;
    } catch (error) {
      if (snapshot) await snapshot.close();
      else await runner.release();
      throw error;
    }
  }

  query<T>(text: string, params: unknown[]): Promise<T[]> {
    return sql<T>(this.runner.manager, text, params).then((result) => result.rows);
  }

  /**
   * Cancels the statement running in this transaction, from another connection of the pool
   * (pg_cancel_backend: the same role may). The statement then fails with 57014, and the
   * transaction is left to close(). A cancel that comes after the statement ended finds the
   * process waiting for its client, and PostgreSQL ignores it there.
   */
  async cancel(dataSource: DataSource, logger: Logger): Promise<void> {
    if (this.pid === undefined) return;
    try {
      await dataSource.query('SELECT pg_cancel_backend($1)', [this.pid]);
    } catch (error) {
      logger.warn(`Could not cancel the audit export's running statement: ${summarize(error)}`);
    }
  }

  /** Ends the transaction and gives the connection back; a connection that broke was already released by TypeORM (and is discarded by the pool). */
  async close(): Promise<void> {
    try {
      if (this.runner.isTransactionActive) await this.runner.rollbackTransaction();
    } catch {
      // The connection is gone, and the server ended the transaction with it. Or (a cancel
      // meant for the last FETCH that reached the ROLLBACK instead) it may still be in the
      // transaction: then it must not go back to the pool, which drops a client that ended.
      if (!this.brokenBy) await (this.connection as unknown as { end(): Promise<void> }).end().catch(() => undefined);
    }
    this.connection.removeListener('error', this.onError);
    await this.runner.release();
  }
}

/** The export's cursor (one per snapshot; the transaction's end closes it). */
const EXPORT_CURSOR = 'sessionary_audit_export';

/**
 * The cursor over the events the filter selects, in `seq` order; the filters use the same
 * indexes as the list. PostgreSQL plans a cursor for its first rows (cursor_tuple_fraction),
 * as it planned the batches' LIMIT.
 */
function exportCursor(filter: AuditFilter, range: SeqRange | undefined): { text: string; params: unknown[] } {
  const params: unknown[] = [];
  const where: string[] = [];
  const add = (condition: (placeholder: string) => string, value: unknown) => {
    params.push(value);
    where.push(condition(`$${params.length}`));
  };
  if (filter.userId) add((p) => `e.user_id = ${p}::uuid`, filter.userId);
  if (filter.type) add((p) => `e.type = ${p}`, filter.type);
  if (filter.from) add((p) => `e.created_at >= ${p}::timestamptz`, filter.from);
  if (filter.to) add((p) => `e.created_at < ${p}::timestamptz`, filter.to);
  if (range) {
    add((p) => `e.seq > ${p}::bigint`, range.after);
    add((p) => `e.seq <= ${p}::bigint`, range.through);
  }
  return {
    text: `DECLARE ${EXPORT_CURSOR} NO SCROLL CURSOR FOR
           SELECT e.seq::text AS seq, ${STORED_EVENT_COLUMNS},
                  e.chain_key, e.chain_pos::text AS chain_pos, e.prev_hash, e.hash
             FROM audit_events e
            ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
            ORDER BY e.seq`,
    params,
  };
}
