/** The few calls the http bench makes to set itself up: users and their sessions. */
import { randomBytes } from 'node:crypto';

export interface BenchUser {
  username: string;
  email: string;
  password: string;
}

export interface Tokens {
  accessToken: string;
  refreshToken: string;
}

async function post<T>(url: string, body: object, expected: number): Promise<T> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  if (res.status !== expected) throw new Error(`POST ${new URL(url).pathname}: ${res.status} ${text.slice(0, 200)}`);
  return JSON.parse(text) as T;
}

export async function registerUser(baseUrl: string, role: string): Promise<BenchUser> {
  const username = `bench_${role}_${randomBytes(4).toString('hex')}`;
  const user = { username, email: `${username}@example.test`, password: `pw-${randomBytes(12).toString('base64url')}` };
  await post(`${baseUrl}/api/v1/auth/register`, user, 201);
  return user;
}

export function login(baseUrl: string, user: BenchUser): Promise<Tokens> {
  return post<Tokens>(`${baseUrl}/api/v1/auth/login`, { email: user.email, password: user.password }, 200);
}

/** Runs `fn` over `items`, at most `limit` at a time (bcrypt makes each call slow). */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
