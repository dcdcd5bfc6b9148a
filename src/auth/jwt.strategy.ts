import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { PassportStrategy } from '@nestjs/passport';
import type { IncomingHttpHeaders } from 'node:http';
import { LRUCache } from 'lru-cache';
import { Strategy } from 'passport-jwt';
import type { AppConfig } from '../config/config';
import { KeyRing } from '../keys/key-ring.service';
import { SIGNING_ALGORITHMS } from '../keys/signing-algorithm';
import { ACCESS_TOKEN_TYPE } from './access-token.service';

/** What a verified access token says; the session guard still has to accept the session. */
export interface AccessTokenClaims {
  userId: string;
  sessionId: string;
  /** `auth_time`, seconds since the epoch; 0 for a token without it (never a recent authentication). */
  authTime: number;
}

// Exactly `Bearer <JWT>` and nothing else (passport-jwt's own extractor ignores trailing text).
const BEARER_JWT = /^Bearer ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)$/i;

/**
 * What the strategy reads of a request: its headers. Passport hands over Fastify's request
 * (Nest's passport guard passes it through), which has them like any other.
 */
export interface TokenBearer {
  headers: IncomingHttpHeaders;
}

export function bearerToken(request: TokenBearer): string | null {
  const header = request.headers.authorization;
  const match = typeof header === 'string' ? BEARER_JWT.exec(header) : null;
  return match ? match[1] : null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

interface VerifiedToken {
  claims: AccessTokenClaims;
  expiresAtMs: number;
}

/**
 * Accepts only `Authorization: Bearer <JWT>` signed by a key of our own ring, picked by the
 * header's `kid` and only with that key's own algorithm (no `none`, no key confusion: an
 * HS256 token "signed" with an ES256 key's public part finds no HS256 key of that kid), with
 * our issuer and audience, unexpired, with `typ: at+jwt`, and no header that names a key
 * elsewhere (`jwk`, `jku`, `x5u`, `x5c`) or asks for extensions (`crit`).
 *
 * A token that passed every check is remembered until its `exp`, or its retiring key's
 * verify_until if sooner (an LRU of SESSION_CACHE_MAX tokens, off at 0): the same string
 * gives the same verdict while the ring is unchanged, so only the expiry has to be checked
 * again; any change of the ring empties it.
 * Verifying the signature and parsing the token was the largest single cost of an
 * authenticated request (ES256 more so than HS256). Only verified tokens enter the cache,
 * looked up by their whole text, so a forged token always takes the full path.
 */
@Injectable()
export class JwtStrategy extends PassportStrategy(Strategy, 'sessionary-jwt') {
  private readonly verified: LRUCache<string, VerifiedToken> | undefined;

  constructor(
    config: ConfigService<AppConfig, true>,
    private readonly ring: KeyRing,
  ) {
    super({
      jwtFromRequest: bearerToken,
      // The header is checked before verification, so a token of another type or naming a
      // key elsewhere is refused whatever its signature.
      // passport-jwt's types predate KeyObject; jsonwebtoken, which it calls, accepts one.
      secretOrKeyProvider: (_req: TokenBearer, rawJwt: string, done: (err: Error | null, key?: string) => void) => {
        const header = isCanonicalBase64url(rawJwt) ? accessTokenHeader(rawJwt) : undefined;
        const key = header && ring.verificationKey(header.alg, header.kid);
        return key ? done(null, key as unknown as string) : done(new Error('Not an access token of ours'));
      },
      // The key's own algorithm was checked above; jsonwebtoken checks it against the key's type again.
      algorithms: [...SIGNING_ALGORITHMS],
      issuer: config.get('JWT_ISSUER', { infer: true }),
      audience: config.get('JWT_AUDIENCE', { infer: true }),
      ignoreExpiration: false,
      passReqToCallback: true,
    });
    const max = config.get('SESSION_CACHE_MAX', { infer: true }) ?? 0;
    const verified = max > 0 ? new LRUCache<string, VerifiedToken>({ max }) : undefined;
    this.verified = verified;
    // A retired or removed key must not leave tokens it signed in the cache.
    if (verified) ring.onChange(() => verified.clear());
  }

  /**
   * The claims of the request's bearer token when this strategy has verified that very token
   * before and it has not expired since; undefined when it must be verified in full.
   */
  rememberedClaims(req: TokenBearer): AccessTokenClaims | undefined {
    const token = this.verified && bearerToken(req);
    const known = token ? this.verified!.get(token) : undefined;
    // jsonwebtoken's rule: expired once the current second reaches exp.
    return known && Date.now() < known.expiresAtMs ? known.claims : undefined;
  }

  /** Passport calls this on a per-request object derived from the strategy. */
  override authenticate(req: TokenBearer, options?: unknown): void {
    const known = this.rememberedClaims(req);
    if (known) return this.success(known);
    (Strategy.prototype.authenticate as (this: unknown, req: TokenBearer, options?: unknown) => void).call(this, req, options);
  }

  validate(req: TokenBearer, payload: Record<string, unknown>): AccessTokenClaims | false {
    const { sub, sid } = payload;
    if (typeof sub !== 'string' || typeof sid !== 'string' || !UUID.test(sub) || !UUID.test(sid)) return false;
    // RFC 9068 requires exp; jsonwebtoken checks expiry only when exp is present.
    if (typeof payload.jti !== 'string' || typeof payload.iat !== 'number' || typeof payload.exp !== 'number') return false;
    // Tokens issued before auth_time existed have none: they never count as a recent authentication.
    // Lower-cased as PostgreSQL writes a uuid back: the session cache is keyed by the token's sid,
    // and a revocation's NOTIFY names the lower-case id, so an upper-case sid (a token this
    // service never signs, but a host's or a future issuer's might) would be cached under a key
    // no revocation clears.
    const claims = {
      userId: sub.toLowerCase(),
      sessionId: sid.toLowerCase(),
      authTime: typeof payload.auth_time === 'number' ? payload.auth_time : 0,
    };
    // Only a token whose not-before has no future to wait for is remembered as it is.
    const token = this.verified && payload.nbf === undefined ? bearerToken(req) : null;
    if (token) {
      // Until its exp, or until its key stops verifying if that comes first (a retiring key's
      // verify_until passes without a change of the ring to empty the cache; until 0.20.2 a
      // token outlived it here, up to its exp).
      const header = accessTokenHeader(token);
      const keyUntil = header ? this.ring.verifiesUntil(header.alg, header.kid) : 0;
      this.verified!.set(token, { claims, expiresAtMs: Math.min(payload.exp * 1000, keyUntil) });
    }
    return claims;
  }
}

/**
 * Whether each of the token's segments is exactly the base64url of the bytes it decodes to. An
 * ES256 signature's last character carries 4 spare low bits, which the decoder ignores: without
 * this check one signed token had 16 spellings, each verifying (a fuzz test found one among its
 * "tampered" tokens), and anything that tells tokens apart by their text would take them for
 * different tokens. (jws compares an HMAC as text, so HS256's other spellings already failed.)
 */
export function isCanonicalBase64url(rawJwt: string): boolean {
  return rawJwt.split('.').every((segment) => Buffer.from(segment, 'base64url').toString('base64url') === segment);
}

const KEY_ELSEWHERE = ['jwk', 'jku', 'x5u', 'x5c', 'x5t', 'x5t#S256', 'crit'];

/**
 * The decoded JOSE header of an access token: `typ` at+jwt, an algorithm and, when present, a
 * string kid; nothing that points at a key outside our ring. Undefined for anything else.
 */
export function accessTokenHeader(rawJwt: string): { alg: string; kid?: string } | undefined {
  try {
    const header = JSON.parse(Buffer.from(rawJwt.split('.')[0] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
    if (header === null || typeof header !== 'object' || header.typ !== ACCESS_TOKEN_TYPE || typeof header.alg !== 'string') return undefined;
    if (header.kid !== undefined && typeof header.kid !== 'string') return undefined;
    if (KEY_ELSEWHERE.some((k) => k in header)) return undefined;
    return { alg: header.alg, kid: header.kid as string | undefined };
  } catch {
    return undefined;
  }
}
