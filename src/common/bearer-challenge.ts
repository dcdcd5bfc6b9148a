import type { IncomingHttpHeaders } from 'node:http';

/** The two challenges of RFC 6750, section 3, that bearerChallenge() writes. */
export const BEARER_CHALLENGES = ['Bearer', 'Bearer error="invalid_token"'] as const;

/**
 * RFC 6750, section 3: a request without credentials gets the bare scheme; one whose token was
 * refused (bad, expired, or its session ended) gets `invalid_token`, the same for every cause.
 */
export function bearerChallenge(request: { headers: IncomingHttpHeaders }): string {
  return request.headers?.authorization === undefined ? BEARER_CHALLENGES[0] : BEARER_CHALLENGES[1];
}

/** The OpenAPI document's `WWW-Authenticate` header of a bearer route's 401. */
export const BEARER_CHALLENGE_HEADER = {
  description: 'RFC 6750: `Bearer` without a token, `Bearer error="invalid_token"` for a refused one',
  schema: { type: 'string', enum: [...BEARER_CHALLENGES] },
};

/** The OpenAPI document's `WWW-Authenticate` header of a 401 for refused credentials in the body (a password, a refresh token). */
export const CREDENTIALS_CHALLENGE_HEADER = {
  description: 'The bare scheme (RFC 9110 wants a challenge on every 401): the credentials in the body were refused, no token was at fault',
  schema: { type: 'string', enum: [BEARER_CHALLENGES[0]] },
};
