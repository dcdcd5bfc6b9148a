import {
  BeforeApplicationShutdown,
  HttpException,
  Inject,
  Injectable,
  Logger,
  OnApplicationBootstrap,
  Optional,
  ServiceUnavailableException,
} from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { SchedulerRegistry } from '@nestjs/schedule';
import { InjectDataSource } from '@nestjs/typeorm';
import { DataSource, QueryRunner } from 'typeorm';
import type { AppConfig } from '../config/config';
import { assertWritableDirectory } from '../config/writable-paths';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { isDatabaseUnavailable } from '../database/pg-errors';
import { LOCK_TAKEN, withSessionAdvisoryLock } from '../database/advisory-lock';
import { StoppableJob } from '../common/stoppable-job';
import { SCHEDULED_JOBS } from '../sessionary/scheduled-jobs';
import { AuditExportService, AuditExportStopped } from './audit-export.service';
import type { ShipDestination, ShipDestinationKind } from './audit-ship-destination';
import { AuditShipDestinations, newestAuditSeq, notThisLogsCopy } from './audit-ship-destinations';
import { settledAuditSeq } from './settled-seq';
import { ShipFailureLog } from './ship-failure-log';

const JOB_NAME = 'sessionary:audit-ship';

/** What a tick did for one destination: the pieces it shipped (their names), or why none. */
export type ShipOutcome =
  | { shipped: string[] }
  | { skipped: 'nothing new' | 'locked' }
  // Stopped at shutdown, after the pieces it had shipped.
  | { skipped: 'shutting down'; shipped: string[] }
  | { failed: string; shipped: string[] };

/** A tick's outcome for each destination configured. */
export type ShipTickOutcome = Partial<Record<ShipDestinationKind, ShipOutcome>>;

/** For /metrics: one destination's pieces and failed ticks on this instance, and how far it got. */
export interface ShipStats {
  pieces: number;
  failures: number;
  shippedThroughSeq: number;
  lastShippedAt: Date | null;
  /** When a tick last left nothing settled unshipped (alert when it falls far behind the interval). */
  caughtUpAt: Date | null;
}

/**
 * Ships the audit log out of the database as it is written, to a directory (AUDIT_SHIP_DIR), an
 * HTTP endpoint (AUDIT_SHIP_URL), or both: every AUDIT_SHIP_INTERVAL seconds, the events after
 * the destination's newest piece, as exports after that piece's `throughSeq`
 * (AuditExportService.openPiece: every event up to the new `throughSeq` that will ever exist,
 * so pieces follow one another exactly), at most AUDIT_SHIP_MAX_EVENTS a piece, one piece after
 * another until the backlog is shipped; `audit-verify --file` verifies the pieces as one log.
 *
 * Instances shipping to one destination take turns under its advisory lock; each instance with
 * a directory of its own ships a whole copy there. A destination's failure leaves it where it
 * was (the next tick starts there again) and does not hold the other one back.
 */
@Injectable()
export class AuditShipTask implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(AuditShipTask.name);
  /** One tick at a time; stopped at shutdown, when a tick starts no further piece (the pool closes after it). */
  private readonly ticks = new StoppableJob<ShipTickOutcome>();
  private readonly destinations: readonly ShipDestination[];
  readonly stats: Partial<Record<ShipDestinationKind, ShipStats>> = {};
  private readonly failureLogs = new Map<ShipDestinationKind, ShipFailureLog>();

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly exporter: AuditExportService,
    destinations: AuditShipDestinations,
    private readonly config: ConfigService<AppConfig, true>,
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
    @Optional() private readonly scheduler?: SchedulerRegistry,
  ) {
    this.destinations = destinations.list;
    for (const d of this.destinations) {
      this.stats[d.kind] = { pieces: 0, failures: 0, shippedThroughSeq: 0, lastShippedAt: null, caughtUpAt: null };
      this.failureLogs.set(d.kind, new ShipFailureLog(this.logger, `${d.kind} ${d.description}`));
    }
  }

  async onApplicationBootstrap(): Promise<void> {
    if (!this.scheduledJobs || !this.destinations.length) return;
    const dir = this.config.get('AUDIT_SHIP_DIR', { infer: true });
    if (dir) await assertWritableDirectory('AUDIT_SHIP_DIR', dir);
    const timer = setInterval(() => void this.handleTick(), this.config.get('AUDIT_SHIP_INTERVAL', { infer: true }) * 1000);
    timer.unref();
    this.scheduler?.addInterval(JOB_NAME, timer);
  }

  /**
   * Before the pool closes: a tick under way finishes the piece it is delivering (an HTTP
   * delivery within its inactivity timeout), starts no other, and releases its lock; the next
   * start ships on from the last piece delivered.
   */
  async beforeApplicationShutdown(): Promise<void> {
    await this.ticks.stop();
  }

  /** Never throws (nothing else would see it), never overlaps itself; ships nothing once the shutdown began. */
  handleTick(): Promise<ShipTickOutcome> {
    return this.ticks.run((stop) => this.tick(stop));
  }

  private async tick(stop: AbortSignal): Promise<ShipTickOutcome> {
    const outcome: ShipTickOutcome = {};
    for (const destination of this.destinations) {
      outcome[destination.kind] = stop.aborted ? { skipped: 'shutting down', shipped: [] } : await this.shipTo(destination, stop);
    }
    return outcome;
  }

  private async shipTo(destination: ShipDestination, stop: AbortSignal): Promise<ShipOutcome> {
    const shipped: string[] = [];
    const failureLog = this.failureLogs.get(destination.kind)!;
    try {
      const outcome = await withSessionAdvisoryLock(this.dataSource, destination.lockKey, (runner) =>
        this.shipAll(destination, runner, shipped, stop),
      );
      if (outcome === LOCK_TAKEN) return { skipped: 'locked' };
      // Stopped at shutdown: not a tick that worked ("works again" would be false).
      if (!('skipped' in outcome && outcome.skipped === 'shutting down')) failureLog.succeeded();
      return outcome;
    } catch (error) {
      this.stats[destination.kind]!.failures++;
      const message = error instanceof Error ? error.message : String(error);
      if (isDatabaseUnavailable(error)) failureLog.failed('warn', 'the database is unavailable');
      // The export's own refusals pass: every export slot taken, or transactions still running after its wait.
      else if (error instanceof HttpException) failureLog.failed('warn', message);
      else failureLog.failed('error', message, error instanceof Error ? error.stack : undefined);
      return { failed: message, shipped };
    }
  }

  /** Piece after piece, until one holds every settled event (one piece a tick could fall behind for good). */
  private async shipAll(destination: ShipDestination, runner: QueryRunner, shipped: string[], stop: AbortSignal): Promise<ShipOutcome> {
    const stats = this.stats[destination.kind]!;
    const end = await destination.shippedEnd(runner);
    let after = end.throughSeq;
    // Another log's pieces, or the database restored from an older backup: shipping on after
    // them would skip events (those the restored log writes under the seqs shipped after its
    // backup). An error, repeated while it lasts (ShipFailureLog).
    const newest = await newestAuditSeq(runner);
    const anythingNew = BigInt(newest) > BigInt(after);
    // Before a piece follows them, the check reads the log's events up to the pieces' end once
    // they are settled: one still uncommitted in a gap the pieces leave (a seq handed out and
    // rolled back before they were shipped, handed out again by a restored log) would pass it
    // unseen, and the piece after it would leave that event out for good.
    // That wait serves the tick's pieces too (they run through the seq it settled).
    let settled: string | undefined;
    if (anythingNew && end.readTail) {
      const seq = await settledAuditSeq(runner.manager, this.exporter.settleTimeoutMs, stop);
      if (stop.aborted) return { skipped: 'shutting down', shipped };
      if (seq === null) throw new ServiceUnavailableException('The audit log is not settled yet; try again');
      settled = seq;
    }
    const foreign = await notThisLogsCopy(runner, destination, end, newest);
    if (foreign) throw new Error(`${foreign[0].toUpperCase()}${foreign.slice(1)}`);
    // No seq handed out since: nothing to wait for or read.
    if (anythingNew) {
      const maxEvents = this.config.get('AUDIT_SHIP_MAX_EVENTS', { infer: true });
      // Each piece starts where the one just delivered ends (the destination recorded it).
      for (let more = true; more;) {
        if (stop.aborted) return { skipped: 'shutting down', shipped };
        let piece: Awaited<ReturnType<AuditExportService['openPiece']>>;
        try {
          piece = await this.exporter.openPiece(after, maxEvents, { signal: stop, settledThrough: settled });
        } catch (error) {
          // Its wait for the log to settle was cut short by the shutdown: no failure (any other is one).
          if (error instanceof AuditExportStopped) return { skipped: 'shutting down', shipped };
          throw error;
        }
        try {
          shipped.push(await destination.deliver({ afterSeq: after, throughSeq: piece.throughSeq, lines: piece.lines }, runner));
        } catch (error) {
          // Whatever the destination did with the lines: a piece neither read to its end nor
          // destroyed holds its export slot, its pooled connection and its snapshot (with a
          // lock on every month) for good, and a delivery that failed before it read them (a
          // header Node refused, a leftover file it could not remove) did exactly that, once a
          // tick, until every export answered 429 and retention waited on the locks (until 0.24.2).
          piece.lines.destroy();
          throw error;
        }
        Object.assign(stats, { pieces: stats.pieces + 1, shippedThroughSeq: Number(piece.throughSeq), lastShippedAt: new Date() });
        [after, more] = [piece.throughSeq, piece.more];
      }
    }
    stats.caughtUpAt = new Date();
    return shipped.length ? { shipped } : { skipped: 'nothing new' };
  }
}
