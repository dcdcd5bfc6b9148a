import { createHash, createPrivateKey, createPublicKey, createSecretKey, generateKeyPairSync, JsonWebKey, KeyObject, randomBytes } from 'node:crypto';
import type { SigningAlgorithm } from './signing-algorithm';

export type KeyState = 'next' | 'current' | 'retiring' | 'retired';

/** A new key before it is sealed and stored: its id, public part (ES256) and private bytes. */
export interface KeyMaterial {
  kid: string;
  algorithm: SigningAlgorithm;
  /** The public key as a JWK (ES256); null for HS256, which has nothing public. */
  publicJwk: JsonWebKey | null;
  /** PKCS#8 DER of the EC private key, or the HMAC secret's bytes. */
  privateBytes: Buffer;
}

/** A key of the ring as an instance holds it in memory, ready to sign or verify. */
export interface RingKey {
  kid: string;
  algorithm: SigningAlgorithm;
  state: Exclude<KeyState, 'retired'>;
  /** The EC private key or the HMAC secret. */
  signingKey: KeyObject;
  /** The EC public key, or the same HMAC secret. */
  verificationKey: KeyObject;
  publicJwk: JsonWebKey | null;
  /** Seeded from JWT_SECRET: also verifies the tokens issued before the ring, which carry no kid. */
  fromJwtSecret: boolean;
  activatedAt: Date | null;
  /** Retiring keys verify until then (every token they signed has expired by then): the row's value. */
  verifyUntil: Date | null;
  /**
   * verify_until on this process's monotonic clock (performance.now()): the database's time
   * left when the ring was read, counted from just before the read was sent, so never later
   * than the database's deadline however far this machine's wall clock is off, or is stepped
   * meanwhile (until 0.29.0 verify_until was compared with Date.now(), and an instance whose
   * clock ran behind the database's went on verifying a stopped key for as long).
   */
  verifiesUntilMs: number | null;
}

// HS256 wants a key at least as long as its output (RFC 7518, section 3.2).
const HMAC_KEY_BYTES = 32;

export function generateKeyMaterial(algorithm: SigningAlgorithm): KeyMaterial {
  if (algorithm === 'HS256') return { kid: randomKid(), algorithm, publicJwk: null, privateBytes: randomBytes(HMAC_KEY_BYTES) };
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const publicJwk = publicKey.export({ format: 'jwk' });
  return { kid: jwkThumbprint(publicJwk), algorithm, publicJwk, privateBytes: privateKey.export({ format: 'der', type: 'pkcs8' }) };
}

/** The HS256 key an existing deployment signed with before the ring: JWT_SECRET's bytes, as jsonwebtoken used them. */
export function keyMaterialFromSecret(secret: string): KeyMaterial {
  return { kid: randomKid(), algorithm: 'HS256', publicJwk: null, privateBytes: Buffer.from(secret, 'utf8') };
}

/** A stored public key that is not its private key's: the row's public part was changed. */
export class PublicKeyMismatchError extends Error {}

/**
 * The keys of a stored key, from its opened private bytes. An EC key's public part is derived
 * from its private key, and the stored JWK must be that key: the private part is sealed with
 * KEY_ENCRYPTION_KEY (its kid and algorithm authenticated with it), the stored JWK is not, and
 * until 0.24.0 it was imported as it stood, so someone who could write the table but did not
 * hold the KEK could put a public key of their own on the current key's row, and every
 * instance (and the published JWKS) accepted tokens they signed. `publicJwk` in the result is
 * the derived one.
 */
export function importKeys(material: Pick<KeyMaterial, 'algorithm' | 'publicJwk' | 'privateBytes'>): {
  signingKey: KeyObject;
  verificationKey: KeyObject;
  publicJwk: JsonWebKey | null;
} {
  if (material.algorithm === 'HS256') {
    const secret = createSecretKey(material.privateBytes);
    return { signingKey: secret, verificationKey: secret, publicJwk: null };
  }
  const signingKey = createPrivateKey({ key: material.privateBytes, format: 'der', type: 'pkcs8' });
  const verificationKey = createPublicKey(signingKey);
  const derived = verificationKey.export({ format: 'jwk' });
  const stored = material.publicJwk;
  if (!stored || stored.kty !== derived.kty || stored.crv !== derived.crv || stored.x !== derived.x || stored.y !== derived.y) {
    throw new PublicKeyMismatchError('its stored public key is not the public part of its private key');
  }
  return { signingKey, verificationKey, publicJwk: derived };
}

/** A JWKS entry (RFC 7517): an EC public key's members, its kid, algorithm and use. */
export interface PublishedJwk {
  kty: string;
  crv: string;
  x: string;
  y: string;
  kid: string;
  alg: string;
  use: 'sig';
}

/** The JWKS entry of an asymmetric key: public members only. */
export function publishedJwk(key: Pick<RingKey, 'kid' | 'algorithm' | 'publicJwk'>): PublishedJwk {
  const { kty, crv, x, y } = key.publicJwk as Required<Pick<JsonWebKey, 'kty' | 'crv' | 'x' | 'y'>>;
  return { kty, crv, x, y, kid: key.kid, alg: key.algorithm, use: 'sig' };
}

/** RFC 7638: SHA-256 of the required members in lexicographic order, base64url. */
export function jwkThumbprint(jwk: JsonWebKey): string {
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y });
  return createHash('sha256').update(canonical).digest('base64url');
}

/** 128 random bits: an HMAC key's id must say nothing about the key. */
function randomKid(): string {
  return randomBytes(16).toString('base64url');
}
