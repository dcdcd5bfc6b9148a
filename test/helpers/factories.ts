import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import type TestAgent from 'supertest/lib/agent';

export interface TestUser {
  id: string;
  username: string;
  email: string;
  password: string;
}

export interface Tokens {
  accessToken: string;
  refreshToken: string;
  sessionId: string;
  expiresIn: number;
  sessionExpiresAt: string;
  tokenType: string;
}

export function uniqueName(prefix = 'u'): string {
  return `${prefix}_${randomBytes(5).toString('hex')}`;
}

export function newUserInput(overrides: Partial<Omit<TestUser, 'id'>> = {}): Omit<TestUser, 'id'> {
  const username = overrides.username ?? uniqueName();
  return {
    username,
    email: overrides.email ?? `${username}@example.test`,
    password: overrides.password ?? `pw-${randomBytes(9).toString('base64url')}`,
  };
}

export async function registerUser(http: TestAgent, overrides: Partial<Omit<TestUser, 'id'>> = {}): Promise<TestUser> {
  const input = newUserInput(overrides);
  const res = await http.post('/api/v1/auth/register').send(input);
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return { ...input, id: res.body.id };
}

export async function login(http: TestAgent, user: Pick<TestUser, 'email' | 'password'>, userAgent = 'test-agent/1.0'): Promise<Tokens> {
  const res = await http.post('/api/v1/auth/login').set('User-Agent', userAgent).send({ email: user.email, password: user.password });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body as Tokens;
}

export async function registerAndLogin(http: TestAgent): Promise<{ user: TestUser; tokens: Tokens }> {
  const user = await registerUser(http);
  return { user, tokens: await login(http, user) };
}

export const bearer = (tokens: Pick<Tokens, 'accessToken'>) => `Bearer ${tokens.accessToken}`;

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
