import { Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { normalizeIp } from '@nestjs/throttler';
import { DataSource } from 'typeorm';
import type { AppConfig } from '../config/config';
import { type CounterKeyDigest, counterKeyDigest } from '../common/counter-key-digest';
import { RetryAfterException } from '../common/retry-after.exception';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { sql } from '../database/sql';

/**
 * Counts one registration of a client IP in its window, starting a new window once the last
 * one ended: one statement, exact across instances (the counter is a row of `rate_limits`,
 * where the general limit keeps its per-IP counts, each under the keyed digest of its key, and
 * its prune deletes both once their window is over). Capped, so that a client that goes on knocking cannot
 * overflow the count.
 */
const COUNT_REGISTRATION = `
  INSERT INTO rate_limits AS r (key, hits, window_ends_at)
  VALUES ($1, 1, now() + make_interval(secs => $2))
  ON CONFLICT (key) DO UPDATE SET
    hits = CASE WHEN r.window_ends_at <= now() THEN 1 ELSE least(r.hits + 1, 1000000000) END,
    window_ends_at = CASE WHEN r.window_ends_at <= now() THEN excluded.window_ends_at ELSE r.window_ends_at END
  RETURNING hits, greatest(ceil(extract(epoch FROM window_ends_at - now())), 1)::int AS retry_after,
    window_ends_at::text AS window_ends_at`;

/**
 * Takes back a registration counted in the window that ends at $2 (the one it was counted in,
 * as text to the microsecond: not a window started since), never below zero.
 */
const UNCOUNT_REGISTRATION = `
  UPDATE rate_limits SET hits = hits - 1 WHERE key = $1 AND window_ends_at = $2::timestamptz AND hits > 0`;

/** The row of `rate_limits` that counts every client's registrations (REGISTER_MAX_TOTAL): no IP key looks like it. */
const TOTAL_KEY = 'register-total';

/**
 * The limits on registrations (within REGISTER_WINDOW): per client IP (REGISTER_MAX_PER_IP),
 * and, when REGISTER_MAX_TOTAL is set, from all clients together. Each registration costs a
 * bcrypt hash at BCRYPT_COST (about a quarter of a second of a core at 12), and the general
 * per-IP limit (600 requests a minute) would let one client keep a few cores busy, or create
 * accounts by the thousand (OWASP API4 and API6); the total caps what many addresses together
 * can do, at the price of refusing everyone's sign-up until the window ends, which is why it
 * is off by default and logs a warning when it trips. Counted in PostgreSQL, exactly, as the
 * login throttle's counts are: a registration is rare and already writes, so a statement or
 * two cost nothing the hash does not dwarf. Behind a proxy the client IP is the forwarded one
 * only when TRUST_PROXY says so; IPv6 clients count per /64, as in the general limit.
 */
@Injectable()
export class RegistrationLimitService {
  private readonly logger = new Logger(RegistrationLimitService.name);
  private readonly maxPerIp: number;
  private readonly maxTotal: number;
  private readonly windowSeconds: number;
  private readonly refusedCounts = { address: 0, total: 0, changes: 0 };
  /** An address's row is keyed by a digest of `register:<ip>`, never the address (see counterKeyDigest). */
  private readonly digest: CounterKeyDigest;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    config: ConfigService<AppConfig, true>,
  ) {
    this.maxPerIp = config.get('REGISTER_MAX_PER_IP', { infer: true });
    this.maxTotal = config.get('REGISTER_MAX_TOTAL', { infer: true });
    this.windowSeconds = config.get('REGISTER_WINDOW', { infer: true });
    this.digest = counterKeyDigest(config.get('PASSWORD_PEPPER', { infer: true }));
  }

  /**
   * Counts a registration of `ipAddress`; a 429 with Retry-After (the window's end) once it is
   * one too many for the address, or, counted only when the address may go on, for everyone.
   * A registration refused by the total is taken back from its address's count: the client did
   * nothing more than anyone else, and retrying once the total's window is over must not find
   * its own allowance spent by refusals.
   */
  async count(ipAddress: string | null): Promise<void> {
    // No address (not over a socket: never on the HTTP path) is not a client to count.
    if (ipAddress === null) return;
    const counted = this.maxPerIp > 0 ? await this.countAddress(ipAddress, 'address') : undefined;
    if (this.maxTotal > 0) {
      const { hits, retryAfter } = await this.countOne(TOTAL_KEY);
      if (hits > this.maxTotal) {
        this.refusedCounts.total++;
        if (counted) await sql(this.dataSource.manager, UNCOUNT_REGISTRATION, [counted.key, counted.windowEndsAt]);
        // The first refused one of a window, on whichever instance counted it (the count is one row).
        if (hits === this.maxTotal + 1)
          this.logger.warn(
            `REGISTER_MAX_TOTAL (${this.maxTotal}) reached: registrations are refused for everyone for ${retryAfter} s (a wave of sign-ups from many addresses, or a limit set too low)`,
          );
        throw new RetryAfterException(retryAfter, 'Too many registrations right now; try again later');
      }
    }
  }

  /**
   * Counts a change of username or email of `ipAddress` with its registrations, per address only
   * (never in the total, which a wave of profile changes must not close for everyone's sign-up):
   * a taken name or email answers 409 there as at registration, so both routes tell which exist,
   * and they share the address's allowance (REGISTER_MAX_PER_IP per REGISTER_WINDOW), else an
   * account's changes would probe names and emails faster than sign-ups can.
   */
  async countIdentifierChange(ipAddress: string | null): Promise<void> {
    if (ipAddress === null || this.maxPerIp === 0) return;
    await this.countAddress(ipAddress, 'changes');
  }

  /** One more for the address (a 429 with Retry-After once it is one too many); the key and window counted. */
  private async countAddress(ipAddress: string, what: 'address' | 'changes'): Promise<{ key: string; windowEndsAt: string }> {
    const key = this.digest(`register:${normalizeIp(ipAddress)}`);
    const { hits, retryAfter, windowEndsAt } = await this.countOne(key);
    if (hits > this.maxPerIp) {
      this.refusedCounts[what]++;
      throw new RetryAfterException(
        retryAfter,
        what === 'address'
          ? 'Too many registrations from this address; try again later'
          : 'Too many registrations and username or email changes from this address; try again later',
      );
    }
    return { key, windowEndsAt };
  }

  /**
   * For /metrics: registrations this instance refused, by the limit that refused them (address,
   * total), and username or email changes refused by their address's allowance (changes).
   */
  refused(): Readonly<{ address: number; total: number; changes: number }> {
    return { ...this.refusedCounts };
  }

  private async countOne(key: string): Promise<{ hits: number; retryAfter: number; windowEndsAt: string }> {
    const {
      rows: [{ hits, retry_after, window_ends_at }],
    } = await sql<{ hits: number; retry_after: number; window_ends_at: string }>(
      this.dataSource.manager,
      COUNT_REGISTRATION,
      [key, this.windowSeconds],
      {
        prepareAs: 'sessionary_count_registration',
      },
    );
    return { hits, retryAfter: retry_after, windowEndsAt: window_ends_at };
  }
}
