import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource, EntityManager } from 'typeorm';
import { AuditService } from '../audit/audit.service';
import type { AppConfig } from '../config/config';
import { SessionMaintenanceService } from '../sessions/session-maintenance.service';
import { jwksMaxAge } from './jwks-max-age';
import { TOKEN_LIFETIME_REFRESH_SECONDS } from './token-lifetime-recorder';
import { generateKeyMaterial, keyMaterialFromSecret } from './signing-key';
import { KeyListing, SigningKeyStore } from './signing-key.store';
import type { SigningAlgorithm } from './signing-algorithm';

/**
 * How much longer than ACCESS_TOKEN_TTL a retiring key verifies: an instance may sign with it
 * until the rotation's NOTIFY reaches it (milliseconds), and instances' clocks differ a little.
 */
export const RETIRING_MARGIN_SECONDS = 60;

export type RotationTrigger = 'cli' | 'schedule' | 'boot';

/**
 * How long a next key must have been published before a rotation makes it sign: twice the
 * JWKS's max-age (a verifier may hold an older set that long, fetched through a shared cache)
 * plus the minute within which every instance has reloaded the ring, and so publishes it. A
 * key made with the current one needs no wait: every set that showed the current key showed
 * it too.
 */
export function nextKeyPublicationSeconds(accessTokenTtl: number): number {
  // Twice the max-age: a shared cache (a CDN, a proxy) may serve a copy as old as the max-age,
  // which a verifier then keeps for the max-age again (jose's cacheMaxAge ignores the Age
  // header). Until 0.28.0 once, and a verifier behind such a cache could refuse a new key's tokens.
  return 2 * jwksMaxAge(accessTokenTtl) + RETIRING_MARGIN_SECONDS;
}

/**
 * A rotation that would make a next key sign before verifiers caching the JWKS can have it:
 * one made by the rotation or boot just before ("rotate twice"). Those that cached the set
 * earlier and do not fetch it again on an unknown kid would refuse every new token until
 * their cache expires. The scheduled job waits instead; the command says how long.
 */
export class NextKeyTooNewError extends Error {
  constructor(
    readonly kid: string,
    readonly publishedSeconds: number,
    readonly publicationSeconds: number,
  ) {
    const wait = Math.ceil(publicationSeconds - publishedSeconds);
    super(
      `the next key ${kid} was published ${Math.floor(publishedSeconds)} s ago, and verifiers may hold an earlier JWKS for ` +
        `${publicationSeconds} s: nothing rotated. Rotate again in ${wait} s, or now with --now (after a leak: a verifier that ` +
        `does not fetch the set again on an unknown kid refuses the new tokens until its copy expires)`,
    );
  }
}

/**
 * A command's rotation with another SIGNING_ALGORITHM than the ring's next key has: a shell
 * without the service's settings (ES256 when unset) would switch every instance's tokens to
 * it. The algorithm changes with the service's own setting: its boot makes the next key of
 * the new algorithm, which a rotation then promotes.
 */
export class AlgorithmMismatchError extends Error {
  constructor(
    readonly ringAlgorithm: SigningAlgorithm,
    readonly configured: SigningAlgorithm,
  ) {
    super(
      `the ring's next key is ${ringAlgorithm}, and SIGNING_ALGORITHM here is ${configured}: nothing rotated. ` +
        `Run it with the service's SIGNING_ALGORITHM; to change the algorithm, change the service's setting and restart it ` +
        `(its boot makes the next key of the new algorithm), then rotate`,
    );
  }
}

/**
 * This process's KEY_ENCRYPTION_KEY does not open the ring's current key (which is not stopped):
 * its setting is not the deployment's (a stale secret, another environment's). Nothing is
 * written: until 0.24.2 such a process could still make a next key, sealed under its own
 * setting, which the other instances could not open, and which a rotation then made current
 * (every instance unready, no command able to start).
 */
export class RingKeyUnopenableError extends Error {
  constructor(readonly kid: string) {
    super(
      `KEY_ENCRYPTION_KEY does not open the ring's current key ${kid} (or the next key, which a ring without a current one promotes): nothing changed in the ring. ` +
        `This process's KEY_ENCRYPTION_KEY is not the one the deployment's keys were sealed with`,
    );
  }
}

export interface RotationResult {
  current: string;
  next: string;
  algorithm: SigningAlgorithm;
  retiring?: { kid: string; verifyUntil: Date };
  retired: string[];
}

/**
 * Every change of the signing-key ring, each in one transaction with its KEY_ROTATED event and
 * under one advisory lock, so boots, the CLI and the scheduled job of many instances never
 * interleave. Instances learn of a change from the table's NOTIFY trigger (KeyRing).
 */
@Injectable()
export class KeyRotationService {
  private readonly store: SigningKeyStore;
  private readonly algorithm: SigningAlgorithm;
  private readonly ownTokenTtl: number;
  private readonly jwtSecret: string | undefined;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly audit: AuditService,
    private readonly sessions: SessionMaintenanceService,
    config: ConfigService<AppConfig, true>,
  ) {
    this.store = new SigningKeyStore(config.get('KEY_ENCRYPTION_KEY', { infer: true }));
    this.algorithm = config.get('SIGNING_ALGORITHM', { infer: true });
    this.ownTokenTtl = config.get('ACCESS_TOKEN_TTL', { infer: true });
    this.jwtSecret = config.get('JWT_SECRET', { infer: true });
  }

  /**
   * The ring's live keys, decrypted, for KeyRing. Read-only: every change of the ring goes
   * through this service, with its KEY_ROTATED event (the store itself was a public getter
   * here, and with it writes without one, until 0.22.0).
   */
  loadLiveKeys(em: EntityManager): ReturnType<SigningKeyStore['loadLive']> {
    return this.store.loadLive(em);
  }

  /** Says that this process issues tokens of its ACCESS_TOKEN_TTL (AccessTokenService, through TokenLifetimeRecorder). */
  async recordTokenLifetime(): Promise<void> {
    await this.store.recordTokenLifetime(this.dataSource.manager, this.ownTokenTtl);
  }

  /**
   * The longest ACCESS_TOKEN_TTL of tokens that may be alive: this process's, and that of every
   * process that issued tokens lately (recordTokenLifetime). A retiring key verifies that long
   * (and a margin), and a next key waits for twice the JWKS max-age it gives: whoever rotates,
   * a command run from a shell without the service's setting included (until 0.28.0 each used
   * its own, and a key was retired while tokens it signed still lived).
   */
  private async tokenTtl(em: EntityManager): Promise<number> {
    return Math.max(this.ownTokenTtl, await this.store.longestLiveTokenLifetime(em, TOKEN_LIFETIME_REFRESH_SECONDS + RETIRING_MARGIN_SECONDS));
  }

  /**
   * At boot: a ring with a current key, and a next key of SIGNING_ALGORITHM (published ahead
   * of its use, so verifiers that cache the JWKS know it before it signs).
   *
   * The first ring of a deployment (ever: a ring rebuilt later is not seeded) that signed with JWT_SECRET before keeps that secret
   * verifying the tokens it issued (they carry no kid): as the current key when
   * SIGNING_ALGORITHM is HS256, otherwise as a retiring key, for as long as those tokens live,
   * and only if a session is active (otherwise no such token can be in use).
   *
   * `adoptAlgorithm` false (a process that runs no scheduled job: the CLI) leaves a complete
   * ring as it is whatever SIGNING_ALGORITHM says: a command run from a shell without the
   * service's setting (ES256 by default) replaced the deployment's next key, and wrote a
   * KEY_ROTATED event, until 0.21.0. It still makes a ring that is missing or incomplete.
   */
  async ensureRing({ adoptAlgorithm = true }: { adoptAlgorithm?: boolean } = {}): Promise<void> {
    await this.dataSource.transaction(async (em) => {
      await this.store.lock(em);
      const keys = await this.store.states(em);
      const current = keys.find((k) => k.state === 'current');
      const next = keys.find((k) => k.state === 'next');
      if (current && next && (next.algorithm === this.algorithm || !adoptAlgorithm)) return;
      const unopenable = await this.assertOpensCurrent(em, keys);
      let currentKid = current?.kid;
      // The ring's algorithm, which a command does not change (see above).
      let algorithm = this.algorithm;
      // The current key gone with a next key left (its row deleted, where the README's stop sets
      // verify_until): that one signs, as a rotation would have it (published since it was
      // made: verifiers that fetched the set since have it). Until 0.28.0 a fresh current key
      // was made beside it, then a fresh next key, which the one next key the ring may hold
      // refused: every boot and command failed. A command promotes it whatever its algorithm; a
      // process that cannot open it changes nothing (its KEY_ENCRYPTION_KEY is the odd one out:
      // replacing the key would leave the other instances one they cannot open).
      if (!currentKid && next && !next.stopped && (next.algorithm === this.algorithm || !adoptAlgorithm)) {
        if (unopenable.has(next.kid)) throw new RingKeyUnopenableError(next.kid);
        currentKid = await this.store.promoteNext(em, next.algorithm);
        algorithm = next.algorithm;
      }
      const retired = await this.store.retire(em, algorithm);
      let retiring: RotationResult['retiring'];
      if (!currentKid) {
        // Only the deployment's first ring takes JWT_SECRET over: a ring rebuilt after a leak
        // must not bring back a secret that leaked with it.
        const firstRing = await this.store.markFirstRing(em);
        const seeded = this.jwtSecret === undefined || !firstRing ? undefined : keyMaterialFromSecret(this.jwtSecret);
        if (seeded && this.algorithm === 'HS256') {
          await this.store.insert(em, seeded, 'current', { fromJwtSecret: true });
          currentKid = seeded.kid;
        } else {
          const fresh = generateKeyMaterial(this.algorithm);
          await this.store.insert(em, fresh, 'current');
          currentKid = fresh.kid;
          if (seeded && (await this.sessions.anyActive(em))) {
            const retiringSeconds = (await this.tokenTtl(em)) + RETIRING_MARGIN_SECONDS;
            await this.store.insert(em, seeded, 'retiring', { fromJwtSecret: true, verifySeconds: retiringSeconds });
            retiring = { kid: seeded.kid, verifyUntil: new Date(Date.now() + retiringSeconds * 1000) };
          }
        }
      }
      const nextKid = await this.insertNext(em, algorithm);
      await this.recordRotation(em, 'boot', { current: currentKid, next: nextKid, algorithm, retiring, retired });
    });
  }

  /**
   * The next key becomes current (a fresh one if there is no next of SIGNING_ALGORITHM), the
   * current one retires once every token it signed has expired (ACCESS_TOKEN_TTL plus a
   * margin), and a new next key is made. Tokens already issued keep working. Nothing changes
   * when the ring's next key has another algorithm than SIGNING_ALGORITHM
   * (AlgorithmMismatchError): an instance whose setting changed made its next key of the new
   * algorithm at boot, so only a caller with another setting than the service's gets there.
   *
   * Nor when the next key was published too recently (NextKeyTooNewError, see
   * nextKeyPublicationSeconds), unless `now` (an operator's choice after a leak) or the
   * current key is stopped (its tokens fail already: waiting would only keep logins failing).
   */
  async rotate(trigger: Exclude<RotationTrigger, 'boot'>, { now = false }: { now?: boolean } = {}): Promise<RotationResult> {
    const outcome = await this.dataSource.transaction(
      async (em): Promise<{ rotated: RotationResult } | { published: string; publicationSeconds: number }> => {
        await this.store.lock(em);
        const ring = await this.store.states(em);
        const next = ring.find((k) => k.state === 'next');
        if (next && next.algorithm !== this.algorithm) throw new AlgorithmMismatchError(next.algorithm, this.algorithm);
        const unopenable = await this.assertOpensCurrent(em, ring);
        const ttl = await this.tokenTtl(em);
        const publicationSeconds = nextKeyPublicationSeconds(ttl);
        const tooNew = this.tooNewToPromote(ring, publicationSeconds);
        if (tooNew && !now && !unopenable.has(tooNew.kid)) throw new NextKeyTooNewError(tooNew.kid, tooNew.publishedSeconds, publicationSeconds);
        // No next key verifiers could have (an operator stopped it, or it does not open):
        // promoting nothing would make a fresh key sign at once, one no JWKS has shown yet (until
        // 0.24.2). A next key is published instead, and committed; the rotation may follow once
        // it is old enough.
        if (!now && this.lacksPublishableNext(ring, unopenable)) {
          return { published: (await this.publishNext(em, trigger, ring, unopenable)).next, publicationSeconds };
        }
        return { rotated: await this.rotateLocked(em, trigger, ring, unopenable, ttl) };
      },
    );
    if ('published' in outcome) throw new NextKeyTooNewError(outcome.published, 0, outcome.publicationSeconds);
    return outcome.rotated;
  }

  /**
   * The scheduled job's work, done by whichever instance takes the lock: retire keys whose
   * tokens have all expired, and rotate when the current key is older than `rotationDays`.
   * Returns the rotation when there was one.
   *
   * A next key of another algorithm than this instance's is left alone, and so is a rotation
   * that would promote over it (`foreignNext`): while a change of SIGNING_ALGORITHM rolls out,
   * the instances that booted with the new setting made it, and those still on the old one
   * retired it within five minutes until 0.22.0, leaving the ring without a next key.
   */
  async maintain(
    rotationDays: number | undefined,
  ): Promise<{ skipped: boolean; rotated?: RotationResult; retired: string[]; foreignNext?: SigningAlgorithm }> {
    return this.dataSource.transaction(async (em) => {
      if (!(await this.store.tryLock(em))) return { skipped: true, retired: [] };
      const ring = await this.store.states(em);
      const current = ring.find((k) => k.state === 'current');
      const next = ring.find((k) => k.state === 'next');
      const unopenable = await this.assertOpensCurrent(em, ring);
      const ttl = await this.tokenTtl(em);
      const foreignNext = next && next.algorithm !== this.algorithm ? next.algorithm : undefined;
      // A next key published too recently, or none verifiers could have (one is published
      // below), waits for a later tick (NextKeyTooNewError).
      const due =
        rotationDays !== undefined &&
        current?.activated_at &&
        Date.now() - current.activated_at.getTime() >= rotationDays * 86_400_000 &&
        !this.tooNewToPromote(ring, nextKeyPublicationSeconds(ttl)) &&
        !this.lacksPublishableNext(ring, unopenable);
      // A current key an operator stopped (verify_until: the emergency stop) signs tokens no
      // instance accepts: rotated at once, whatever the schedule and whatever the next key's
      // algorithm (a next key of another one is retired, and a fresh key of this instance's
      // signs), so logins work again (while a next key of another algorithm was in the ring,
      // never, until 0.24.2).
      const stopped = current?.stopped ?? false;
      if (stopped || (due && !foreignNext)) {
        const rotated = await this.rotateLocked(em, 'schedule', ring, unopenable, ttl);
        return { skipped: false, rotated, retired: rotated.retired };
      }
      // A next key an operator stopped is retired here, and a fresh one published in its place,
      // so that the next rotation has one verifiers know (until 0.24.2 the ring went without,
      // until a restart, and the rotation then made a key that signed unpublished).
      if (!foreignNext && this.lacksPublishableNext(ring, unopenable)) {
        const { retired } = await this.publishNext(em, 'schedule', ring, unopenable);
        return { skipped: false, retired };
      }
      const retired = await this.store.retire(em, foreignNext ?? this.algorithm);
      // A retirement changes the ring too (the key leaves it, its private part erased): audited
      // like the others, in its transaction (until 0.20.2 only a log line said so).
      if (retired.length) {
        await this.recordRotation(em, 'schedule', {
          current: current?.kid ?? null,
          next: ring.find((k) => k.state === 'next')?.kid ?? null,
          algorithm: this.algorithm,
          retired,
        });
      }
      return { skipped: false, retired, foreignNext };
    });
  }

  async list(): Promise<KeyListing[]> {
    return this.store.list(this.dataSource.manager);
  }

  /**
   * The next key a rotation would promote, when verifiers may not have it yet: published less
   * than `publicationSeconds` ago and after the current key. Undefined when it may sign now, or
   * when waiting would help nothing: no promotable next key (a fresh one is made), or a stopped
   * current key.
   */
  private tooNewToPromote(
    ring: Awaited<ReturnType<SigningKeyStore['states']>>,
    publicationSeconds: number,
  ): { kid: string; publishedSeconds: number } | undefined {
    const current = ring.find((k) => k.state === 'current');
    const next = ring.find((k) => k.state === 'next');
    if (!next || next.algorithm !== this.algorithm || next.stopped || current?.stopped) return undefined;
    if (next.publishedWithCurrent || next.publishedSeconds >= publicationSeconds) return undefined;
    return { kid: next.kid, publishedSeconds: next.publishedSeconds };
  }

  /**
   * A ring with a current key that signs but no next key a rotation could promote: none (made
   * incomplete), or one an operator stopped. A next key of another algorithm is not this: it is
   * the rollout's (see maintain) or AlgorithmMismatchError's.
   */
  private lacksPublishableNext(ring: Awaited<ReturnType<SigningKeyStore['states']>>, unopenable: ReadonlySet<string>): boolean {
    const current = ring.find((k) => k.state === 'current');
    const next = ring.find((k) => k.state === 'next');
    if (!current || current.stopped) return false;
    return !next || (next.algorithm === this.algorithm && (next.stopped || unopenable.has(next.kid)));
  }

  /**
   * The live keys this process cannot open; throws RingKeyUnopenableError when the current key
   * is one of them and still signs (then this process is the one in the wrong, and must change
   * nothing). A stopped current key may not open (the KEY_ENCRYPTION_KEY changed after a
   * leak, every key stopped): the rotation then replaces it, as it should.
   */
  private async assertOpensCurrent(em: EntityManager, ring: Awaited<ReturnType<SigningKeyStore['states']>>): Promise<Set<string>> {
    const unopenable = await this.store.unopenable(em);
    const current = ring.find((k) => k.state === 'current');
    if (current && !current.stopped && unopenable.has(current.kid)) throw new RingKeyUnopenableError(current.kid);
    return unopenable;
  }

  /** Retires what is due (a stopped next key with it), publishes a fresh next key, and records the change. */
  private async publishNext(
    em: EntityManager,
    trigger: Exclude<RotationTrigger, 'boot'>,
    ring: Awaited<ReturnType<SigningKeyStore['states']>>,
    unopenable: ReadonlySet<string>,
  ): Promise<{ next: string; retired: string[] }> {
    const retired = [...(await this.store.retire(em, this.algorithm)), ...(await this.retireUnopenableNext(em, ring, unopenable))];
    const next = await this.insertNext(em);
    const current = ring.find((k) => k.state === 'current')!.kid;
    await this.recordRotation(em, trigger, { current, next, algorithm: this.algorithm, retired });
    return { next, retired };
  }

  /** A next key of the ring that does not open (the current one does): retired, never promoted. */
  private async retireUnopenableNext(
    em: EntityManager,
    ring: Awaited<ReturnType<SigningKeyStore['states']>>,
    unopenable: ReadonlySet<string>,
  ): Promise<string[]> {
    const next = ring.find((k) => k.state === 'next');
    return next && unopenable.has(next.kid) ? this.store.retireNext(em, next.kid) : [];
  }

  private async rotateLocked(
    em: EntityManager,
    trigger: Exclude<RotationTrigger, 'boot'>,
    ring: Awaited<ReturnType<SigningKeyStore['states']>>,
    unopenable: ReadonlySet<string>,
    /** The longest lifetime of the tokens the current key signed (tokenTtl). */
    tokenTtl: number,
  ): Promise<RotationResult> {
    // A next key retire() took already (stopped, another algorithm) is 'next' no more: retireNext then changes nothing.
    const retired = [...(await this.store.retire(em, this.algorithm)), ...(await this.retireUnopenableNext(em, ring, unopenable))];
    const retiring = await this.store.demoteCurrent(em, tokenTtl + RETIRING_MARGIN_SECONDS);
    let current = await this.store.promoteNext(em, this.algorithm);
    if (!current) {
      const fresh = generateKeyMaterial(this.algorithm);
      await this.store.insert(em, fresh, 'current');
      current = fresh.kid;
    }
    const next = await this.insertNext(em);
    const result: RotationResult = { current, next, algorithm: this.algorithm, retiring, retired };
    await this.recordRotation(em, trigger, result);
    return result;
  }

  private async insertNext(em: EntityManager, algorithm: SigningAlgorithm = this.algorithm): Promise<string> {
    const next = generateKeyMaterial(algorithm);
    await this.store.insert(em, next, 'next');
    return next.kid;
  }

  /** The ring as a change left it (a retirement alone leaves the current and next keys as they were). */
  private async recordRotation(
    em: EntityManager,
    trigger: RotationTrigger,
    result: Omit<RotationResult, 'current' | 'next'> & { current: string | null; next: string | null },
  ): Promise<void> {
    await this.audit.record(em, {
      type: 'KEY_ROTATED',
      userId: null,
      metadata: {
        trigger,
        algorithm: result.algorithm,
        current: result.current,
        next: result.next,
        retiring: result.retiring?.kid ?? null,
        retiringUntil: result.retiring?.verifyUntil.toISOString() ?? null,
        retired: result.retired.join(',') || null,
      },
    });
  }
}
