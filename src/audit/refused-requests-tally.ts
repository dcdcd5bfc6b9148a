import { normalizeIp } from '@nestjs/throttler';
import { BeforeApplicationShutdown, Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { DataSource } from 'typeorm';
import type { AppConfig } from '../config/config';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { isDatabaseUnavailable } from '../database/pg-errors';
import type { AuditMetadata } from './audit-event.entity';
import { AuditEventInput, AuditService } from './audit.service';

/**
 * Refusals anyone can provoke at will, with no account or session to name (ASVS 16.3.1, 16.3.3):
 * - `bearerRefused`: an `Authorization` header on a route behind the session guard whose token
 *   failed verification for any reason but its expiry (forged, malformed, another issuer's, a
 *   retired key's; an expired token is what every client sends once an hour, not an attack);
 * - `refreshUnknown`: a refresh token that is malformed or matches no session (one that matches
 *   a session is audited as REFRESH_FAILED);
 * - `invalidInput` (400), `bodyTooLarge` (413), `unsupportedMediaType` (415): input refused by
 *   validation or by the request's hygiene;
 * - `rateLimited` (429): a client held back by a rate limit or a login back-off.
 */
export const REFUSAL_KINDS = ['bearerRefused', 'refreshUnknown', 'invalidInput', 'bodyTooLarge', 'unsupportedMediaType', 'rateLimited'] as const;
export type RefusalKind = (typeof REFUSAL_KINDS)[number];

const REFUSAL_OF_STATUS: ReadonlyMap<number, RefusalKind> = new Map([
  [400, 'invalidInput'],
  [413, 'bodyTooLarge'],
  [415, 'unsupportedMediaType'],
  [429, 'rateLimited'],
]);

/** The refusal a 4xx answer is, by its status; other statuses are not counted here. */
export function refusalOfStatus(status: number): RefusalKind | undefined {
  return REFUSAL_OF_STATUS.get(status);
}

type Counts = Record<RefusalKind, number>;

/** Client addresses counted one by one within an interval; refusals from further ones are counted together. */
const MAX_TRACKED_IPS = 10_000;

/**
 * Counts those refusals per client IP and writes them to the audit log as a summary every
 * AUDIT_REFUSAL_SUMMARY_INTERVAL seconds: one REQUESTS_REFUSED event for each of the
 * `maxEventsPerInterval` most refused addresses (user and session null, the address as the
 * event's IP, the counts by kind and the interval in its metadata), and one more, without an
 * address, for all the others together (with how many they were). So random input from any
 * number of addresses writes at most maxEventsPerInterval + 1 rows an interval and instance,
 * while a single prober's address and volume are in the log. Memory is bounded as well
 * (MAX_TRACKED_IPS addresses). Nothing is written for an interval without refusals; the
 * counts of an interval whose write failed are added to the next one's.
 */
@Injectable()
export class RefusedRequestsTally implements OnApplicationBootstrap, BeforeApplicationShutdown, OnApplicationShutdown {
  private readonly logger = new Logger('RefusedRequests');
  /** Addresses with events of their own per interval (the most refused first). */
  maxEventsPerInterval = 100;
  private byIp = new Map<string, Counts>();
  /** Refusals without an address, or from addresses past MAX_TRACKED_IPS. */
  private untracked = zeroCounts();
  private since = new Date();
  /** Every refusal this instance counted since it started, by kind (/metrics). */
  private readonly totals = zeroCounts();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<number> | undefined;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly audit: AuditService,
    private readonly config: ConfigService<AppConfig, true>,
  ) {}

  onApplicationBootstrap(): void {
    // On every instance that serves requests, whatever SCHEDULED_JOBS says: each writes its own counts.
    this.timer = setInterval(() => void this.flush(), this.config.get('AUDIT_REFUSAL_SUMMARY_INTERVAL', { infer: true }) * 1000);
    this.timer.unref();
  }

  /** The last interval's counts, while the database is still there. */
  async beforeApplicationShutdown(): Promise<void> {
    clearInterval(this.timer);
    // Twice: a flush already under way holds only what was counted before it began.
    await this.flush();
    await this.flush();
  }

  /**
   * The HTTP server is closed by now: what requests answered since the flush above counted is
   * written too (the database closes later: Nest shuts the global TypeORM module down last).
   */
  async onApplicationShutdown(): Promise<void> {
    await this.flush();
  }

  /**
   * One refusal of this client address (null when unknown). Cheap: a map update. Counted as the
   * rate limits count a client (normalizeIp): an IPv6 client's /64, an IPv4-mapped address as
   * IPv4. Until 0.24.1 each address of a /64 was an address of its own here, so one host that
   * picks its low 64 bits at will filled the 10,000 tracked addresses every interval, pushing
   * every other prober into the untracked rest, its own volume never under one address.
   */
  count(ip: string | null, kind: RefusalKind): void {
    this.countsOf(ip === null ? null : normalizeIp(ip))[kind]++;
    this.totals[kind]++;
  }

  /** Every refusal counted since this instance started, by kind. */
  countedSinceStart(): Readonly<Counts> {
    return this.totals;
  }

  /** Where this address's refusals are counted: its own counts, or the untracked ones. */
  private countsOf(ip: string | null): Counts {
    if (ip === null) return this.untracked;
    let counts = this.byIp.get(ip);
    if (counts) return counts;
    if (this.byIp.size >= MAX_TRACKED_IPS) return this.untracked;
    counts = zeroCounts();
    this.byIp.set(ip, counts);
    return counts;
  }

  /** Writes the interval's summary (never throws; one flush at a time). Returns the events written. */
  flush(): Promise<number> {
    this.flushing ??= this.write().finally(() => (this.flushing = undefined));
    return this.flushing;
  }

  private async write(): Promise<number> {
    const [byIp, untracked, since, until] = [this.byIp, this.untracked, this.since, new Date()];
    if (!byIp.size && !total(untracked)) {
      this.since = until;
      return 0;
    }
    [this.byIp, this.untracked, this.since] = [new Map(), zeroCounts(), until];
    const events = summaryEvents(byIp, untracked, since, until, this.maxEventsPerInterval);
    try {
      await this.dataSource.transaction((em) => this.audit.record(em, ...events));
      return events.length;
    } catch (error) {
      // Kept for the next interval: its summary then covers both (its `since` is this one's).
      this.since = since;
      for (const [ip, counts] of byIp) addCounts(this.countsOf(ip), counts);
      addCounts(this.untracked, untracked);
      if (isDatabaseUnavailable(error)) this.logger.warn('Recording the refused requests skipped: the database is unavailable');
      else this.logger.error('Recording the refused requests failed', error instanceof Error ? error.stack : String(error));
      return 0;
    }
  }
}

/** The interval's REQUESTS_REFUSED events: the most refused addresses one by one, the rest together. */
function summaryEvents(byIp: Map<string, Counts>, untracked: Counts, since: Date, until: Date, maxEvents: number): AuditEventInput[] {
  const ranked = [...byIp].sort((a, b) => total(b[1]) - total(a[1]) || (a[0] < b[0] ? -1 : 1));
  const interval = { since: since.toISOString(), until: until.toISOString() };
  const events: AuditEventInput[] = ranked.slice(0, maxEvents).map(([ip, counts]) => ({
    type: 'REQUESTS_REFUSED',
    userId: null,
    client: { ipAddress: ip, userAgent: null },
    metadata: { ...interval, ...countsMetadata(counts) },
  }));
  const rest = ranked.slice(maxEvents);
  const others = rest.reduce((sum, [, counts]) => addCounts(sum, counts), { ...untracked });
  if (total(others)) {
    events.push({
      type: 'REQUESTS_REFUSED',
      userId: null,
      client: null,
      // `ips`: the addresses counted one by one and summed here; refusals without an address, or
      // from addresses past those the instance keeps apart, are in the counts but not in `ips`.
      metadata: { ...interval, ...countsMetadata(others), ips: rest.length, ipsComplete: total(untracked) === 0 },
    });
  }
  return events;
}

function countsMetadata(counts: Counts): AuditMetadata {
  const nonZero = Object.fromEntries(REFUSAL_KINDS.filter((k) => counts[k] > 0).map((k) => [k, counts[k]]));
  return { total: total(counts), ...nonZero };
}

function zeroCounts(): Counts {
  return Object.fromEntries(REFUSAL_KINDS.map((k) => [k, 0])) as Counts;
}

function addCounts(into: Counts, counts: Counts): Counts {
  for (const kind of REFUSAL_KINDS) into[kind] += counts[kind];
  return into;
}

function total(counts: Counts): number {
  return REFUSAL_KINDS.reduce((n, k) => n + counts[k], 0);
}
