/**
 * No enumeration by timing (ASVS 6.3.8): a login for an unknown account must cost what a
 * wrong password costs. Both are measured interleaved in one run, against the real app and
 * PostgreSQL, and compared as a ratio (a ratio near 1.00 is the goal).
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test npm run bench -- login-timing
 */
import { performance } from 'node:perf_hooks';
import { createTestApp, dropDatabaseForThisFile } from '../test/helpers/test-app';
import { registerUser, uniqueName } from '../test/helpers/factories';
import { fmt, summary } from './stats';

async function main(): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 40);
  // Production's cost factor; throttling is off so every attempt reaches bcrypt.
  const t = await createTestApp({ BCRYPT_COST: '12', LOGIN_MAX_FAILURES_PER_IDENTIFIER: '100000' });
  try {
    const user = await registerUser(t.http);
    const unknown: number[] = [];
    const wrong: number[] = [];
    const time = async (body: object) => {
      const start = performance.now();
      const res = await t.http.post('/api/v1/auth/login').send(body);
      if (res.status !== 401) throw new Error(`expected 401, got ${res.status}`);
      return performance.now() - start;
    };
    await time({ email: user.email, password: 'warm-up-password' });
    for (let i = 0; i < rounds; i++) {
      // Interleaved, so drift in machine load hits both sides alike.
      wrong.push(await time({ email: user.email, password: `wrong-password-${i}` }));
      unknown.push(await time({ email: `${uniqueName()}@example.test`, password: `wrong-password-${i}` }));
    }
    const u = summary(unknown);
    const w = summary(wrong);
    console.log(`login, unknown account : median ${fmt(u.median)} (p10 ${fmt(u.p10)}, p90 ${fmt(u.p90)})`);
    console.log(`login, wrong password  : median ${fmt(w.median)} (p10 ${fmt(w.p10)}, p90 ${fmt(w.p90)})`);
    console.log(`ratio unknown/wrong    : ${(u.median / w.median).toFixed(3)}  (${rounds} rounds each)`);
  } finally {
    await t.close();
    await dropDatabaseForThisFile();
  }
}

void main();
