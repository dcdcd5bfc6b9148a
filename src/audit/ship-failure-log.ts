import type { LoggerService } from '@nestjs/common';

/** While a destination keeps failing, how often one line says so (the ticks between are only counted). */
export const SHIP_FAILURE_REMINDER_MS = 15 * 60_000;

type Level = 'warn' | 'error';

/**
 * Logs one destination's failing ticks as an outage, not as a line (and a stack) per tick: a
 * log sink down for a night would otherwise write 480 error stacks at the default interval.
 * The first failure is logged as it comes; while failures go on, a line at most every
 * SHIP_FAILURE_REMINDER_MS with how many and since when (or at once when a failure is worse
 * than those logged: an error after warnings); the first success after them says so.
 * `/metrics` counts every failed tick either way (sessionary_audit_ship_pieces_total).
 */
export class ShipFailureLog {
  private streak: { since: number; failures: number; loggedAt: number; level: Level } | undefined;

  constructor(
    private readonly logger: LoggerService,
    /** "directory /var/audit", "http https://logs.example/ingest": what the lines name. */
    private readonly destination: string,
    private readonly now: () => number = Date.now,
  ) {}

  /** A tick failed: `message` says why in one line; `stack`, for an unexpected error, is logged with the first of its level. */
  failed(level: Level, message: string, stack?: string): void {
    const now = this.now();
    const streak = this.streak;
    if (!streak) {
      this.streak = { since: now, failures: 1, loggedAt: now, level };
      this.write(level, `Shipping the audit log to ${this.destination} failed: ${message}`, stack);
      return;
    }
    streak.failures++;
    const worse = level === 'error' && streak.level === 'warn';
    if (!worse && now - streak.loggedAt < SHIP_FAILURE_REMINDER_MS) return;
    streak.loggedAt = now;
    streak.level = worse ? 'error' : streak.level;
    this.write(
      streak.level,
      `Shipping the audit log to ${this.destination} still failing: ${streak.failures} failed ticks since ${new Date(streak.since).toISOString()}; the last: ${message}`,
      worse ? stack : undefined,
    );
  }

  /** A tick shipped or found nothing new: ends a streak of failures, with a line saying so. */
  succeeded(): void {
    const streak = this.streak;
    if (!streak) return;
    this.streak = undefined;
    this.logger.log(
      `Shipping the audit log to ${this.destination} works again after ${streak.failures} failed tick(s) since ${new Date(streak.since).toISOString()}`,
    );
  }

  private write(level: Level, message: string, stack: string | undefined): void {
    if (level === 'warn') this.logger.warn(message);
    else if (stack === undefined) this.logger.error(message);
    else this.logger.error(message, stack);
  }
}
