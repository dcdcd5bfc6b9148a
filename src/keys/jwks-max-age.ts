/**
 * The JWKS's max-age: a fifth of the rotation overlap (ACCESS_TOKEN_TTL), at most five minutes
 * and at least one second. A rotation waits at least this long after publishing a next key
 * before it signs (nextKeyPublicationSeconds), so no verifier's cached set lacks it.
 */
export function jwksMaxAge(accessTokenTtl: number): number {
  return Math.max(1, Math.min(300, Math.floor(accessTokenTtl / 5)));
}
