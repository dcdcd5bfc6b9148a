import { BeforeApplicationShutdown, Injectable, Logger, OnModuleInit } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from './data-source-name';
import type { Pool } from 'pg';
import { DataSource } from 'typeorm';
import { isDatabaseUnavailable } from './pg-errors';

/** While down, how often one warning line sums up the failures not logged one by one. */
export const OUTAGE_REPORT_INTERVAL_MS = 30_000;
/** While down, how often a `SELECT 1` checks whether the database is back. */
export const OUTAGE_PROBE_INTERVAL_MS = 2_000;

/**
 * Turns a database outage into a few log lines instead of one stack per request: a warning
 * when it starts, a summary at most every 30 s while it lasts (with the count of failures
 * since the last line), and a line when a probe finds the database back. The pool recovers
 * by itself (every checkout tries a new connection); the probe is only there to say so,
 * also when no traffic arrives.
 */
@Injectable()
export class DatabaseOutageMonitor implements OnModuleInit, BeforeApplicationShutdown {
  private readonly logger = new Logger('Database');
  private downSince: number | undefined;
  private lastReportAt = 0;
  private failuresSinceReport = 0;
  private failuresTotal = 0;
  private probeTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  /** Replaceable in unit tests. */
  now: () => number = Date.now;

  constructor(@InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource) {}

  onModuleInit(): void {
    // pg-pool emits 'error' when an IDLE connection dies (every idle one, when the server
    // stops). TypeORM's own listener (data-source.options.ts makes it quiet) keeps that from
    // crashing the process; this one counts it into the outage lines.
    const pool = (this.dataSource.driver as { master?: Pool }).master;
    pool?.on('error', (error) => {
      if (isDatabaseUnavailable(error)) this.failed(error, 'an idle pooled connection');
      else this.logger.warn(`An idle pooled connection failed: ${summarize(error)}`);
    });
  }

  /**
   * Before any module's onApplicationShutdown, the data source's close among them: this
   * provider's module is global, so its onApplicationShutdown ran after the pool had closed,
   * and a probe due meanwhile queried the closing pool (until 0.27.0).
   */
  beforeApplicationShutdown(): void {
    this.stopped = true;
    clearTimeout(this.probeTimer);
  }

  get isDown(): boolean {
    return this.downSince !== undefined;
  }

  /** Records one failure caused by the database being unavailable; logs only as described above. */
  failed(error: unknown, where: string): void {
    const now = this.now();
    this.failuresTotal++;
    if (this.downSince === undefined) {
      this.downSince = now;
      this.lastReportAt = now;
      this.failuresSinceReport = 0;
      this.failuresTotal = 1;
      this.logger.warn(`Database unavailable (${summarize(error)}, first seen on ${where}); answering 503 with Retry-After until it is back`);
      this.scheduleProbe();
      return;
    }
    this.failuresSinceReport++;
    if (now - this.lastReportAt >= OUTAGE_REPORT_INTERVAL_MS) {
      this.logger.warn(
        `Database still unavailable after ${seconds(now - this.downSince)} s: ${this.failuresSinceReport} more failures ` +
          `(${summarize(error)}) since the last line`,
      );
      this.lastReportAt = now;
      this.failuresSinceReport = 0;
    }
  }

  /** The probe found the database answering. */
  recovered(): void {
    if (this.downSince === undefined) return;
    this.logger.log(`Database available again after ${seconds(this.now() - this.downSince)} s (${this.failuresTotal} failures in all)`);
    this.downSince = undefined;
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }

  private scheduleProbe(): void {
    if (this.stopped || this.probeTimer) return;
    this.probeTimer = setTimeout(() => void this.probe(), OUTAGE_PROBE_INTERVAL_MS);
    // Never what keeps the process (or a test run) alive.
    this.probeTimer.unref();
  }

  private async probe(): Promise<void> {
    this.probeTimer = undefined;
    if (this.stopped || this.downSince === undefined) return;
    try {
      // Back means taking writes again: a read-only server (a standby, default_transaction_read_only)
      // answers a bare SELECT 1, and a recovery logged then would be followed by the next outage line.
      const [{ writable }] = (await this.dataSource.query(
        `SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean) AS writable`,
      )) as Array<{ writable: boolean }>;
      if (writable) this.recovered();
      else this.scheduleProbe();
    } catch (error) {
      // Still down (the requests' failures are what the summary lines count): probe again.
      if (!isDatabaseUnavailable(error)) this.logger.warn(`Database probe failed: ${summarize(error)}`);
      this.scheduleProbe();
    }
  }
}

/** The innermost driver error's code and message: no stack, no SQL, no parameters. */
export function summarize(error: unknown): string {
  let inner: unknown = error;
  for (let depth = 0; depth < 4; depth++) {
    const next = (inner as { driverError?: unknown; cause?: unknown } | null)?.driverError ?? (inner as { cause?: unknown } | null)?.cause;
    if (next === undefined || next === null) break;
    inner = next;
  }
  const { code, name, message } = (inner ?? {}) as { code?: unknown; name?: unknown; message?: unknown };
  const text = typeof message === 'string' ? message : String(inner);
  // pg's DatabaseError is named 'error'; TypeORM's own errors say more by their name.
  const label = typeof code === 'string' ? code : typeof name === 'string' && !/^error$/i.test(name) ? name : undefined;
  return (label ? `${label}: ` : '') + text.slice(0, 200);
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(1);
}
