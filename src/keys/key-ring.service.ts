import { Inject, Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource } from 'typeorm';
import type { AppConfig } from '../config/config';
import { PgChannelListener, notifyFromNewConnection, notifyThrough } from '../database/pg-channel-listener';
import { SCHEDULED_JOBS } from '../sessionary/scheduled-jobs';
import { KeyRotationService } from './key-rotation.service';
import { PublishedJwk, publishedJwk, RingKey } from './signing-key';
import type { RefusedKey } from './signing-key.store';

export const SIGNING_KEYS_CHANNEL = 'sessionary_signing_keys';

/** How often the ring is read again even without a NOTIFY: a safety net, not the mechanism. */
const RELOAD_EVERY_MS = 60_000;
/**
 * How often the ring is read while its listener is not trusted (not connected yet, lost, or
 * not shown to hear the database the service writes to): a stop must not wait for the safety
 * net's minute there, since this instance would go on verifying a stopped key's tokens, from
 * its token memory too (until 0.25.0 it did, up to RELOAD_EVERY_MS).
 */
export const UNTRUSTED_RELOAD_EVERY_MS = 2_000;
/** A ring not read for this long (three safety-net reads missed) makes the instance not ready. */
export const RING_STALE_AFTER_MS = 3 * RELOAD_EVERY_MS;

/**
 * This instance's copy of the signing-key ring: the key that signs, the keys that verify (by
 * kid, only ever from this ring) and the public keys to publish. Loaded at boot, after making
 * sure the ring exists; read again at once on every change anywhere (a trigger NOTIFYs
 * `sessionary_signing_keys`), after every reconnection of its listener, every two seconds while
 * the listener is not trusted, and every minute.
 *
 * Verification needs no query: a token's key is looked up in memory.
 */
@Injectable()
export class KeyRing implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(KeyRing.name);
  private byKid = new Map<string, RingKey>();
  private current: RingKey | undefined;
  /** Verifies the tokens issued before the ring existed (no kid), while it lives. */
  private kidless: RingKey | undefined;
  private readonly changeHandlers: Array<() => void> = [];
  private listener: PgChannelListener | undefined;
  private safetyNet: NodeJS.Timeout | undefined;
  /** Reads the ring every UNTRUSTED_RELOAD_EVERY_MS while the listener is not trusted. */
  private untrustedPoll: NodeJS.Timeout | undefined;
  /** Set at shutdown: no poll starts after it (the listener's stop calls onLost). */
  private shutDown = false;
  private reloading: Promise<void> | undefined;
  private reloadRequested = false;
  private fingerprint = '';
  /** The refused rows already logged, by kid and reason (see keptFor). */
  private readonly refusalsLogged = new Set<string>();
  /** The last read's rows that did not open or were changed, by what this instance did with each (for /metrics). */
  private refusedRows = { kept_earlier_copy: 0, left_out: 0 };
  /** When the ring was last read whole (performance.now()); undefined before the first read. */
  private loadedAt: number | undefined;
  /** See RING_STALE_AFTER_MS (a field so that tests can shorten it). */
  staleAfterMs = RING_STALE_AFTER_MS;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly rotation: KeyRotationService,
    private readonly config: ConfigService<AppConfig, true>,
    // A service instance (true) brings the ring to its SIGNING_ALGORITHM; a command (false) does not.
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
  ) {}

  async onModuleInit(): Promise<void> {
    await this.rotation.ensureRing({ adoptAlgorithm: this.scheduledJobs });
    await this.reload();
    const poolUrl = this.config.get('DATABASE_URL', { infer: true })!;
    this.listener = new PgChannelListener({
      url: this.config.get('DATABASE_LISTEN_URL', { infer: true }) ?? poolUrl,
      channel: SIGNING_KEYS_CHANNEL,
      name: 'sessionary-keys',
      notifyThroughPool: (channel) => notifyThrough(this.dataSource, channel),
      notifyFromNewConnection: (channel, payload) => notifyFromNewConnection(poolUrl, 'sessionary-keys', channel, payload),
      onNotification: () => this.requestReload(),
      // Trusted from here on: what changed while it was not is read now, then the poll stops.
      onListening: async () => {
        await this.reload();
        this.stopUntrustedPoll();
      },
      onLost: () => this.pollWhileUntrusted(),
    });
    this.pollWhileUntrusted();
    await this.listener.start();
    this.safetyNet = setInterval(() => this.requestReload({ periodic: true }), RELOAD_EVERY_MS).unref();
  }

  async onApplicationShutdown(): Promise<void> {
    // Before the listener's stop, whose onLost would start the untrusted poll again: until
    // 0.27.0 it did, and after the app closed read the ring every 2 s through the closed pool
    // ("Driver not Connected", a warning each time) for as long as the process lived.
    this.shutDown = true;
    clearInterval(this.safetyNet);
    this.stopUntrustedPoll();
    await this.listener?.stop();
    await this.reloading?.catch(() => undefined);
  }

  /** The key new tokens are signed with. */
  signingKey(): RingKey {
    if (!this.current) throw new Error('The signing-key ring has no current key');
    return this.current;
  }

  /**
   * The key that verifies a token whose header names this algorithm and kid, or undefined:
   * unknown kid, an algorithm other than the key's own, a retiring key past its time. A token
   * without a kid can only be one issued before the ring, verified by JWT_SECRET's key.
   */
  verificationKey(algorithm: unknown, kid: unknown): RingKey['verificationKey'] | undefined {
    const key = kid === undefined ? this.kidless : typeof kid === 'string' ? this.byKid.get(kid) : undefined;
    if (!key || key.algorithm !== algorithm || !verifiesNow(key)) return undefined;
    return key.verificationKey;
  }

  /**
   * Until when (ms since the epoch, on this process's wall clock, as Date.now() counts now) the
   * key verificationKey() gives for this algorithm and kid verifies: a retiring or stopped key's
   * verify_until as the database counts it (RingKey.verifiesUntilMs), Infinity for the others,
   * 0 when there is none.
   */
  verifiesUntil(algorithm: unknown, kid: unknown): number {
    if (!this.verificationKey(algorithm, kid)) return 0;
    const key = kid === undefined ? this.kidless! : this.byKid.get(kid as string)!;
    // On the wall clock, as the token's exp it is compared with beside it (JwtStrategy).
    return key.verifiesUntilMs === null ? Infinity : Date.now() + (key.verifiesUntilMs - performance.now());
  }

  /** The public keys of the next, current and retiring asymmetric keys (RFC 7517 JWK members only). */
  publicJwks(): PublishedJwk[] {
    return [...this.byKid.values()].filter((key) => key.publicJwk && verifiesNow(key)).map(publishedJwk);
  }

  /** Seconds since the current key started signing (for /metrics). */
  currentKeyAgeSeconds(): number {
    const since = this.current?.activatedAt;
    return since ? Math.max(0, (Date.now() - since.getTime()) / 1000) : 0;
  }

  /**
   * Rows of the ring that the last read did not trust (changed in the table, or sealed under
   * another KEY_ENCRYPTION_KEY): `kept_earlier_copy` where this instance verifies with the copy
   * it read before, `left_out` where it refuses that key's tokens. Anything but 0 needs an
   * operator (the error log line says which kid, once).
   */
  refusedRowCounts(): { kept_earlier_copy: number; left_out: number } {
    return { ...this.refusedRows };
  }

  /**
   * The keys that verify now, by state: a key an operator stopped (its verify_until come), or a
   * retiring one past its end, is held until the next read but verifies nothing, so it is not
   * counted (until 0.24.2 it was: an alert on `next == 0` stayed quiet while the next key was stopped).
   */
  keyCounts(): Record<RingKey['state'], number> {
    const counts = { next: 0, current: 0, retiring: 0 };
    for (const key of this.byKid.values()) if (verifiesNow(key)) counts[key.state]++;
    return counts;
  }

  get listening(): boolean {
    return this.listener?.listening ?? false;
  }

  /**
   * Why this instance should take no requests for its ring, or undefined: it has not been read
   * for staleAfterMs (each read failing: the database, or a row that does not open or was
   * changed, see SigningKeyStore.loadLive). Such an instance keeps signing with a current key
   * the others may have retired since (their 401s for its tokens), and keeps verifying keys
   * they have stopped: readiness answers 503, so that a load balancer stops sending it requests.
   */
  staleness(): string | undefined {
    if (this.loadedAt === undefined) return 'signing keys: never read';
    const ms = performance.now() - this.loadedAt;
    return ms < this.staleAfterMs ? undefined : `signing keys: not read for ${Math.round(ms / 1000)} s, each read failing (see the warnings)`;
  }

  /** Called after every change of this instance's ring (the JWT strategy forgets the tokens it verified). */
  onChange(handler: () => void): void {
    this.changeHandlers.push(handler);
  }

  /**
   * Reads the ring now; concurrent requests share one read, and a read overtaken by a newer
   * request is discarded and done again, so what is applied is never older than the last NOTIFY.
   *
   * `periodic`: a timer's read (the safety net, the poll while the listener is not trusted),
   * which announces no change: it shares a read under way and never discards it. Until 0.28.0
   * it did, and with reads slower than the poll's 2 s (a slow database, a saturated pool)
   * every read was discarded and none applied: a stopped key kept verifying on that instance.
   */
  async reload({ periodic = false }: { periodic?: boolean } = {}): Promise<void> {
    if (this.reloading) {
      if (!periodic) this.reloadRequested = true;
      return this.reloading;
    }
    this.reloading = (async () => {
      try {
        for (;;) {
          this.reloadRequested = false;
          const { keys, refused } = await this.rotation.loadLiveKeys(this.dataSource.manager);
          // A change was announced while this read ran: it may predate the change, so it is
          // not applied even for a moment (a stopped key must not verify again); read again.
          if (this.reloadRequested) continue;
          const kept = this.keptFor(refused);
          this.refusedRows = { kept_earlier_copy: kept.length, left_out: refused.length - kept.length };
          const usable = [...keys, ...kept];
          // The current key's own row does not open and no copy was read before: why, as the error.
          const unusableCurrent = usable.some((k) => k.state === 'current') ? undefined : refused.find((r) => r.state === 'current');
          if (unusableCurrent) throw new Error(unusableCurrent.reason);
          this.apply(usable);
          this.loadedAt = performance.now();
          break;
        }
      } finally {
        this.reloading = undefined;
      }
    })();
    return this.reloading;
  }

  private pollWhileUntrusted(): void {
    if (this.shutDown) return;
    this.untrustedPoll ??= setInterval(() => this.requestReload({ periodic: true }), UNTRUSTED_RELOAD_EVERY_MS).unref();
  }

  private stopUntrustedPoll(): void {
    clearInterval(this.untrustedPoll);
    this.untrustedPoll = undefined;
  }

  private requestReload(options?: { periodic: boolean }): void {
    this.reload(options).catch((error: unknown) =>
      this.logger.warn(`Could not read the signing keys (${error instanceof Error ? error.message : 'unknown error'}); keeping the ring as it was`),
    );
  }

  /**
   * For each row that does not open, the copy of its key this instance read before, with what
   * the row says now (its state, its verify_until: a rotation or a stop still applies), or
   * nothing: a row changed in the table, or written under another KEY_ENCRYPTION_KEY, is not
   * trusted, but it does not take the whole ring with it (every instance would otherwise stop
   * reading the ring, and after RING_STALE_AFTER_MS answer readiness 503, on one bad row). An
   * error is logged once for each such row and reason.
   */
  private keptFor(refused: RefusedKey[]): RingKey[] {
    const kept: RingKey[] = [];
    for (const row of refused) {
      const held = this.byKid.get(row.kid);
      const keep = held !== undefined && held.algorithm === row.algorithm;
      const logged = `${row.kid}|${row.reason}`;
      if (!this.refusalsLogged.has(logged)) {
        this.refusalsLogged.add(logged);
        this.logger.error(
          `${row.reason}: ${keep ? 'this instance keeps the copy it read before' : 'its tokens are refused here'} (a ${row.state} key)`,
        );
      }
      if (keep)
        kept.push({ ...held, state: row.state, verifyUntil: row.verifyUntil, verifiesUntilMs: row.verifiesUntilMs, activatedAt: row.activatedAt });
    }
    return kept;
  }

  private apply(keys: RingKey[]): void {
    const current = keys.find((k) => k.state === 'current');
    if (!current) throw new Error('The signing-key ring has no current key');
    const fingerprint = keys
      .map((k) => `${k.kid}:${k.state}:${k.verifyUntil?.getTime() ?? ''}`)
      .sort()
      .join(',');
    this.byKid = new Map(keys.map((k) => [k.kid, k]));
    this.current = current;
    this.kidless = keys.find((k) => k.fromJwtSecret);
    // The minute's safety-net read usually finds nothing new: only a real change tells the handlers.
    if (fingerprint === this.fingerprint) return;
    this.fingerprint = fingerprint;
    for (const handler of this.changeHandlers) handler();
  }
}

/**
 * Retiring keys verify until every token they signed has expired; the others while no
 * verify_until is set. The README's emergency stop (`UPDATE signing_keys SET verify_until =
 * now()`) stops a key in any state: on a current or next key it did nothing until 0.24.0, and
 * a compromised current key stopped that way kept verifying (and signing: tokens it signs now
 * are refused everywhere, until a rotation makes another key current).
 */
function verifiesNow(key: RingKey): boolean {
  return key.verifiesUntilMs === null || performance.now() < key.verifiesUntilMs;
}
