import { createHash, randomBytes } from 'node:crypto';

/** 32 bytes in base64url, unpadded: what every refresh token looks like (and the OpenAPI document says). */
export const REFRESH_TOKEN_PATTERN = /^[A-Za-z0-9_-]{43}$/;
export const REFRESH_TOKEN_LENGTH = 43;

/** 256 bits from the CSPRNG, URL-safe; opaque to clients. */
export function generateRefreshToken(): string {
  return randomBytes(32).toString('base64url');
}

/**
 * Only this hash is stored. A fast hash is right here: the token has 256 bits of entropy, so
 * unlike a password it cannot be guessed, and lookup by hash stays a single index probe.
 */
export function hashRefreshToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Cheap shape check before any database work; the length bound also caps hashing cost. */
export function looksLikeRefreshToken(token: string): boolean {
  return REFRESH_TOKEN_PATTERN.test(token);
}
