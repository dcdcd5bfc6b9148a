import { createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { HttpException, Inject, Injectable, Logger, OnApplicationBootstrap, Optional } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { SchedulerRegistry } from '@nestjs/schedule';
import { InjectDataSource } from '@nestjs/typeorm';
import { DataSource } from 'typeorm';
import type { AppConfig } from '../config/config';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { isDatabaseUnavailable } from '../database/pg-errors';
import { sql } from '../database/sql';
import { LOCK_TAKEN, withSessionAdvisoryLock } from '../database/advisory-lock';
import { SCHEDULED_JOBS } from '../sessionary/scheduled-jobs';
import { AuditExportService } from './audit-export.service';
import { SHIPPED_PIECE_NAME, shippedPieceName } from './audit-export-format';

const JOB_NAME = 'audit-ship';

/** One instance ships at a time: instances that share AUDIT_SHIP_DIR never write the same piece twice. */
const SHIP_LOCK_KEY = '7022357861416547437';

/** What a tick did. */
export type ShipOutcome = { shipped: string } | { skipped: 'nothing new' | 'locked' | 'off' } | { failed: string };

/**
 * Ships the audit log out of the database as it is written (AUDIT_SHIP_DIR): every
 * AUDIT_SHIP_INTERVAL seconds, the events after the newest piece in the directory, as an export
 * after that piece's `throughSeq` (AuditExportService.openAfter: every event up to the new
 * `throughSeq` that will ever exist, so pieces follow one another exactly). Each piece is a file
 * of its own, written under a temporary name and renamed whole, so a reader (a log shipper, a
 * sync to other storage) never sees a part of one; `audit-verify --file` verifies the pieces as
 * one log.
 *
 * The directory is the only state: the next piece starts where its newest one ends, so nothing
 * in the database (which an attacker there could change) decides what is shipped, and a
 * directory emptied by its reader starts again from the first event (mind that: move pieces
 * away, keeping the newest, or let the reader keep what it took). Instances that share the
 * directory take turns under an advisory lock; each instance with a directory of its own ships
 * a whole copy there. The first piece holds the whole log so far (an export reads about 50k
 * events a second); ticks due meanwhile find it running and add nothing.
 */
@Injectable()
export class AuditShipTask implements OnApplicationBootstrap {
  private readonly logger = new Logger(AuditShipTask.name);
  private running: Promise<ShipOutcome> | undefined;
  /** For /metrics: this instance's pieces, its failed ticks, and the newest seq it shipped through. */
  readonly stats = { pieces: 0, failures: 0, shippedThroughSeq: 0, lastShippedAt: null as Date | null };

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly exporter: AuditExportService,
    private readonly config: ConfigService<AppConfig, true>,
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
    @Optional() private readonly scheduler?: SchedulerRegistry,
  ) {}

  onApplicationBootstrap(): void {
    if (!this.scheduledJobs || !this.config.get('AUDIT_SHIP_DIR', { infer: true })) return;
    const timer = setInterval(() => void this.handleTick(), this.config.get('AUDIT_SHIP_INTERVAL', { infer: true }) * 1000);
    timer.unref();
    this.scheduler?.addInterval(JOB_NAME, timer);
  }

  /** Never throws (nothing else would see it), never overlaps itself. */
  handleTick(): Promise<ShipOutcome> {
    this.running ??= this.tick().finally(() => (this.running = undefined));
    return this.running;
  }

  private async tick(): Promise<ShipOutcome> {
    const dir = this.config.get('AUDIT_SHIP_DIR', { infer: true });
    if (!dir) return { skipped: 'off' };
    try {
      const outcome = await withSessionAdvisoryLock(this.dataSource, SHIP_LOCK_KEY, () => this.shipNext(dir));
      return outcome === LOCK_TAKEN ? { skipped: 'locked' } : outcome;
    } catch (error) {
      this.stats.failures++;
      if (isDatabaseUnavailable(error)) this.logger.warn('Shipping the audit log skipped: the database is unavailable');
      // The export's own refusals pass: every export slot taken, or transactions still running after its wait.
      else if (error instanceof HttpException) this.logger.warn(`Shipping the audit log skipped this time: ${error.message}`);
      else this.logger.error(`Shipping the audit log to ${dir} failed`, error instanceof Error ? error.stack : String(error));
      return { failed: error instanceof Error ? error.message : String(error) };
    }
  }

  private async shipNext(dir: string): Promise<ShipOutcome> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const after = await newestPieceEnd(dir);
    // No seq handed out since: nothing to wait for or read.
    const {
      rows: [{ newest }],
    } = await sql<{ newest: string | null }>(
      this.dataSource.manager,
      `SELECT pg_sequence_last_value(pg_get_serial_sequence('audit_events', 'seq'))::text AS newest`,
    );
    if (BigInt(newest ?? '0') < BigInt(after)) {
      // Not this log's pieces, or the database restored from an older backup: shipping on after
      // them would skip every event until the sequence caught up. Said at every tick, loudly.
      throw new Error(
        `The newest piece in ${dir} runs through seq ${after}, past this audit log's newest seq (${newest ?? 0}): the directory holds another log's pieces, or the database was restored from an older backup; move them away`,
      );
    }
    if (BigInt(newest ?? '0') === BigInt(after)) return { skipped: 'nothing new' };
    const { lines, throughSeq } = await this.exporter.openAfter({}, after);
    const file = join(dir, shippedPieceName(after, throughSeq));
    try {
      await pipeline(lines, createWriteStream(`${file}.partial`, { mode: 0o600 }));
    } catch (error) {
      await rm(`${file}.partial`, { force: true });
      throw error;
    }
    await rename(`${file}.partial`, file);
    Object.assign(this.stats, { pieces: this.stats.pieces + 1, shippedThroughSeq: Number(throughSeq), lastShippedAt: new Date() });
    return { shipped: file };
  }
}

/** The `throughSeq` of the newest piece in the directory ('0' when it holds none): where the next one starts. */
async function newestPieceEnd(dir: string): Promise<string> {
  let newest = 0n;
  for (const name of await readdir(dir)) {
    const match = SHIPPED_PIECE_NAME.exec(name);
    if (match && BigInt(match[2]) > newest) newest = BigInt(match[2]);
  }
  return newest.toString();
}
