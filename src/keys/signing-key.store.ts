import type { JsonWebKey } from 'node:crypto';
import { EntityManager } from 'typeorm';
import { rowsOf, sql } from '../database/sql';
import { KeyDecryptionError, KeyEncryption } from './key-encryption';
import { importKeys, KeyMaterial, KeyState, PublicKeyMismatchError, RingKey } from './signing-key';
import type { SigningAlgorithm } from './signing-algorithm';

/** A live key's row that does not open (SigningKeyStore.loadLive): what the row says of it, and why. */
export type RefusedKey = Pick<RingKey, 'kid' | 'algorithm' | 'state' | 'fromJwtSecret' | 'activatedAt' | 'verifyUntil' | 'verifiesUntilMs'> & {
  reason: string;
};

/** A key as `keys list` shows it: everything but secrets. */
export interface KeyListing {
  kid: string;
  algorithm: SigningAlgorithm;
  state: KeyState;
  fromJwtSecret: boolean;
  createdAt: Date;
  activatedAt: Date | null;
  verifyUntil: Date | null;
  retiredAt: Date | null;
}

interface KeyRow {
  kid: string;
  algorithm: SigningAlgorithm;
  state: KeyState;
  public_jwk: JsonWebKey | null;
  private_key: Buffer | null;
  from_jwt_secret: boolean;
  created_at: Date;
  activated_at: Date | null;
  verify_until: Date | null;
  retired_at: Date | null;
}

/** When a key of the ring was stopped and published, by the database's clock (SigningKeyStore.states). */
interface RingTimes {
  stopped: boolean;
  publishedSeconds: number;
  publishedWithCurrent: boolean;
}

/** The kid and algorithm are authenticated with the sealed key: a ciphertext moved to another row does not open. */
const sealingContext = (kid: string, algorithm: SigningAlgorithm) => `${kid}|${algorithm}`;

/** Reads and writes `signing_keys`; private parts go in sealed and come out opened. */
export class SigningKeyStore {
  private readonly encryption: KeyEncryption;

  constructor(keyEncryptionKey: string) {
    this.encryption = new KeyEncryption(keyEncryptionKey);
  }

  /**
   * Every key that is not retired, opened and imported, ready to sign and verify; and the rows
   * that do not open (sealed under another KEY_ENCRYPTION_KEY, or changed: a private part that
   * does not decrypt, a public key that is not the private key's), with what the row says of
   * them and why, for KeyRing to keep a copy it read before, or to leave them out.
   */
  async loadLive(em: EntityManager): Promise<{ keys: RingKey[]; refused: RefusedKey[] }> {
    // The deadline's time left by the database's clock, added to this process's monotonic clock as
    // it was before the query went out: an estimate that errs early by the query's way there, never late.
    const sentAtMs = performance.now();
    const rows = await rowsOf<KeyRow & { verify_ms_left: number | null }>(
      em,
      `SELECT *, (extract(epoch FROM "verify_until" - clock_timestamp()) * 1000)::float8 AS "verify_ms_left"
         FROM "signing_keys" WHERE "state" <> 'retired'`,
    );
    const keys: RingKey[] = [];
    const refused: RefusedKey[] = [];
    for (const row of rows) {
      const described = {
        kid: row.kid,
        algorithm: row.algorithm,
        state: row.state as RingKey['state'],
        fromJwtSecret: row.from_jwt_secret,
        activatedAt: row.activated_at,
        verifyUntil: row.verify_until,
        verifiesUntilMs: row.verify_ms_left === null ? null : sentAtMs + Number(row.verify_ms_left),
      };
      let privateBytes: Buffer;
      try {
        privateBytes = this.encryption.open(row.private_key!, sealingContext(row.kid, row.algorithm));
      } catch (error) {
        if (!(error instanceof KeyDecryptionError)) throw error;
        refused.push({
          ...described,
          reason: `Signing key ${row.kid} does not decrypt: KEY_ENCRYPTION_KEY is not the one it was stored with, or the row was changed`,
        });
        continue;
      }
      try {
        keys.push({ ...described, ...importKeys({ algorithm: row.algorithm, publicJwk: row.public_jwk, privateBytes }) });
      } catch (error) {
        if (!(error instanceof PublicKeyMismatchError)) throw error;
        refused.push({ ...described, reason: `Signing key ${row.kid} was changed in the table: ${error.message}` });
      }
    }
    return { keys, refused };
  }

  /** The kids of the live keys whose rows this process cannot open (loadLive's refused). */
  async unopenable(em: EntityManager): Promise<Set<string>> {
    return new Set((await this.loadLive(em)).refused.map((k) => k.kid));
  }

  /** Retires one next key (its private part erased): one that does not open, which must never be promoted. */
  async retireNext(em: EntityManager, kid: string): Promise<string[]> {
    const rows = await rowsOf<{ kid: string }>(
      em,
      `UPDATE "signing_keys" SET "state" = 'retired', "private_key" = NULL, "retired_at" = now()
        WHERE "kid" = $1 AND "state" = 'next' RETURNING "kid"`,
      [kid],
    );
    return rows.map((r) => r.kid);
  }

  async list(em: EntityManager): Promise<KeyListing[]> {
    const rows = await rowsOf<KeyRow>(
      em,
      `SELECT "kid", "algorithm", "state", "from_jwt_secret", "created_at", "activated_at", "verify_until", "retired_at"
         FROM "signing_keys"
        -- Keys made in one transaction share created_at: their states order them as they serve.
        ORDER BY "created_at", array_position(ARRAY['retired', 'retiring', 'current', 'next']::varchar[], "state"), "kid"`,
    );
    return rows.map((row) => ({
      kid: row.kid,
      algorithm: row.algorithm,
      state: row.state,
      fromJwtSecret: row.from_jwt_secret,
      createdAt: row.created_at,
      activatedAt: row.activated_at,
      verifyUntil: row.verify_until,
      retiredAt: row.retired_at,
    }));
  }

  /** Serialises every change of the ring (boot, rotation, retirement) across instances and the CLI. */
  async lock(em: EntityManager): Promise<void> {
    await sql(em, 'SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', ['sessionary signing keys']);
  }

  /** The same lock, without waiting: false when another instance holds it. */
  async tryLock(em: EntityManager): Promise<boolean> {
    const { rows } = await sql<{ locked: boolean }>(em, 'SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS locked', [
      'sessionary signing keys',
    ]);
    return rows[0].locked;
  }

  /** A process issues tokens of this lifetime (now): see AccessTokenLifetimes. */
  async recordTokenLifetime(em: EntityManager, ttlSeconds: number): Promise<void> {
    await sql(
      em,
      `INSERT INTO "access_token_lifetimes" ("ttl_seconds", "seen_at") VALUES ($1, now())
       ON CONFLICT ("ttl_seconds") DO UPDATE SET "seen_at" = now()`,
      [ttlSeconds],
    );
  }

  /**
   * The longest lifetime of tokens that may still be alive (0: none recorded): one a process
   * said it issues within that lifetime and `slackSeconds` (how long it may go on issuing after
   * it last said so). In float8: an int4 sum overflows past ACCESS_TOKEN_TTL's bound.
   */
  async longestLiveTokenLifetime(em: EntityManager, slackSeconds: number): Promise<number> {
    const {
      rows: [{ ttl }],
    } = await sql<{ ttl: number }>(
      em,
      `SELECT coalesce(max("ttl_seconds"), 0) AS ttl FROM "access_token_lifetimes"
        WHERE "seen_at" > now() - make_interval(secs => "ttl_seconds"::float8 + $1::float8)`,
      [slackSeconds],
    );
    return ttl;
  }

  /**
   * Records that this deployment has made its first ring: true the first time (then JWT_SECRET
   * may seed it), false ever after, a rebuilt ring included (see the migration SigningKeyRingMade).
   */
  async markFirstRing(em: EntityManager): Promise<boolean> {
    const { rows } = await sql(em, `INSERT INTO "signing_key_ring_made" DEFAULT VALUES ON CONFLICT DO NOTHING RETURNING "made_at"`);
    return rows.length > 0;
  }

  /**
   * The current and next keys. `stopped`: an operator set its verify_until, which has come (the
   * database's clock). `publishedSeconds`: how long ago it was made, and so published in the
   * JWKS; `publishedWithCurrent`: made no later than the current key (every set that showed the
   * current key showed it too).
   */
  async states(em: EntityManager): Promise<Array<Pick<KeyRow, 'kid' | 'algorithm' | 'state' | 'activated_at' | 'verify_until'> & RingTimes>> {
    return rowsOf(
      em,
      `SELECT k."kid", k."algorithm", k."state", k."activated_at", k."verify_until",
              COALESCE(k."verify_until" <= now(), false) AS "stopped",
              EXTRACT(EPOCH FROM now() - k."created_at")::float8 AS "publishedSeconds",
              k."created_at" <= (SELECT c."created_at" FROM "signing_keys" c WHERE c."state" = 'current') IS TRUE AS "publishedWithCurrent"
         FROM "signing_keys" k WHERE k."state" IN ('current', 'next')`,
    );
  }

  /**
   * Stores a new key. A current key is active from now; a retiring one verifies for
   * `verifySeconds` more (a key seeded from JWT_SECRET, for the tokens issued before the ring).
   */
  async insert(
    em: EntityManager,
    material: KeyMaterial,
    state: Exclude<KeyState, 'retired'>,
    options: { fromJwtSecret?: boolean; verifySeconds?: number } = {},
  ): Promise<void> {
    await sql(
      em,
      `INSERT INTO "signing_keys" ("kid", "algorithm", "state", "public_jwk", "private_key", "from_jwt_secret", "activated_at", "verify_until")
       VALUES ($1, $2, $3::varchar, $4, $5, $6,
               CASE WHEN $3::varchar IN ('current', 'retiring') THEN now() END,
               CASE WHEN $3::varchar = 'retiring' THEN now() + make_interval(secs => $7) END)`,
      [
        material.kid,
        material.algorithm,
        state,
        material.publicJwk === null ? null : JSON.stringify(material.publicJwk),
        this.encryption.seal(material.privateBytes, sealingContext(material.kid, material.algorithm)),
        options.fromJwtSecret ?? false,
        options.verifySeconds ?? 0,
      ],
    );
  }

  /**
   * The current key starts retiring: it verifies for `verifySeconds` more, and signs no more; or
   * less, when an operator has stopped it already (verify_until set on the current key: the
   * README's emergency stop), which a rotation must not undo.
   */
  async demoteCurrent(em: EntityManager, verifySeconds: number): Promise<{ kid: string; verifyUntil: Date } | undefined> {
    const rows = await rowsOf<{ kid: string; verify_until: Date }>(
      em,
      `UPDATE "signing_keys" SET "state" = 'retiring', "verify_until" = LEAST("verify_until", now() + make_interval(secs => $1))
        WHERE "state" = 'current' RETURNING "kid", "verify_until"`,
      [verifySeconds],
    );
    return rows[0] && { kid: rows[0].kid, verifyUntil: rows[0].verify_until };
  }

  /** The next key, if it has this algorithm and no operator has stopped it (verify_until), becomes current. */
  async promoteNext(em: EntityManager, algorithm: SigningAlgorithm): Promise<string | undefined> {
    const rows = await rowsOf<{ kid: string }>(
      em,
      `UPDATE "signing_keys" SET "state" = 'current', "activated_at" = now()
        WHERE "state" = 'next' AND "algorithm" = $1 AND ("verify_until" IS NULL OR "verify_until" > now()) RETURNING "kid"`,
      [algorithm],
    );
    return rows[0]?.kid;
  }

  /**
   * Retires, erasing the private part: retiring keys whose tokens have all expired, and a next
   * key of another algorithm than the configured one or stopped by an operator (verify_until
   * set: the README's emergency stop after a leak); a next key never signed anything.
   */
  async retire(em: EntityManager, configured: SigningAlgorithm): Promise<string[]> {
    const rows = await rowsOf<{ kid: string }>(
      em,
      `UPDATE "signing_keys" SET "state" = 'retired', "private_key" = NULL, "retired_at" = now()
        WHERE ("state" = 'retiring' AND "verify_until" <= now())
           OR ("state" = 'next' AND ("algorithm" <> $1 OR "verify_until" <= now()))
        RETURNING "kid"`,
      [configured],
    );
    return rows.map((r) => r.kid);
  }
}
