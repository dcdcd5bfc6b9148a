import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { normalizeIp } from '@nestjs/throttler';
import { DataSource } from 'typeorm';
import type { AppConfig } from '../config/config';
import { RetryAfterException } from '../common/retry-after.exception';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { sql } from '../database/sql';

/**
 * Counts one registration of a client IP in its window, starting a new window once the last
 * one ended: one statement, exact across instances (the counter is a row of `rate_limits`,
 * where the general limit keeps its per-IP counts under `default:` keys, and its prune deletes
 * both once their window is over). Capped, so that a client that goes on knocking cannot
 * overflow the count.
 */
const COUNT_REGISTRATION = `
  INSERT INTO rate_limits AS r (key, hits, window_ends_at)
  VALUES ($1, 1, now() + make_interval(secs => $2))
  ON CONFLICT (key) DO UPDATE SET
    hits = CASE WHEN r.window_ends_at <= now() THEN 1 ELSE least(r.hits + 1, 1000000000) END,
    window_ends_at = CASE WHEN r.window_ends_at <= now() THEN excluded.window_ends_at ELSE r.window_ends_at END
  RETURNING hits, greatest(ceil(extract(epoch FROM window_ends_at - now())), 1)::int AS retry_after`;

/**
 * The limit on registrations per client IP (REGISTER_MAX_PER_IP within REGISTER_WINDOW): each
 * costs a bcrypt hash at BCRYPT_COST (about a quarter of a second of a core at 12), and the
 * general per-IP limit (600 requests a minute) would let one client keep a few cores busy, or
 * create accounts by the thousand (OWASP API4 and API6). Counted in PostgreSQL, exactly, as the
 * login throttle's counts are: a registration is rare and already writes, so the one statement
 * costs nothing the hash does not dwarf. Behind a proxy the client IP is the forwarded one only
 * when TRUST_PROXY says so; IPv6 clients count per /64, as in the general limit.
 */
@Injectable()
export class RegistrationLimitService {
  private readonly max: number;
  private readonly windowSeconds: number;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    config: ConfigService<AppConfig, true>,
  ) {
    this.max = config.get('REGISTER_MAX_PER_IP', { infer: true });
    this.windowSeconds = config.get('REGISTER_WINDOW', { infer: true });
  }

  /** Counts a registration of `ipAddress`; a 429 with Retry-After (the window's end) once it is one too many. */
  async count(ipAddress: string | null): Promise<void> {
    // No address (not over a socket: never on the HTTP path) is not a client to count.
    if (this.max === 0 || ipAddress === null) return;
    const {
      rows: [{ hits, retry_after }],
    } = await sql<{ hits: number; retry_after: number }>(
      this.dataSource.manager,
      COUNT_REGISTRATION,
      [`register:${normalizeIp(ipAddress)}`, this.windowSeconds],
      {
        prepareAs: 'sessionary_count_registration',
      },
    );
    if (hits > this.max) throw new RetryAfterException(retry_after, 'Too many registrations from this address; try again later');
  }
}
