import assert from 'node:assert/strict';
import type TestAgent from 'supertest/lib/agent';
import type { DataSource } from 'typeorm';
import type { Tokens } from './factories';

/** The challenge of a step-up refusal with the default REAUTH_MAX_AGE (RFC 9470, section 3). */
export const STEP_UP_CHALLENGE =
  'Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age=300';

/** The payload of a JWT, unverified (the tests read what the server signed). */
export function jwtClaims(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8')) as Record<string, unknown>;
}

/**
 * Tokens of the same session whose auth_time is `ageSeconds` old: the session's auth_time is
 * moved back, and a refresh (which carries it forward) issues them, as it would after a wait.
 */
export async function staleTokens(t: { http: TestAgent; db: DataSource }, tokens: Tokens, ageSeconds = 3600): Promise<Tokens> {
  await t.db.query(`UPDATE sessions SET auth_time = now() - make_interval(secs => $2) WHERE id = $1`, [tokens.sessionId, ageSeconds]);
  const res = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body as Tokens;
}
