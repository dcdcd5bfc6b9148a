/**
 * What one signature costs, per algorithm, when nothing is remembered: jsonwebtoken's sign and
 * verify with HS256 and ES256 keys as KeyObjects, and, for HS256, with a string secret (which
 * jsonwebtoken re-imports on every call: why the service hands over KeyObjects). Measured side
 * by side in one run. The service signs once per login or refresh and verifies once per new
 * token (its strategy remembers verified tokens), so these are its cold-path costs.
 *   npm run bench -- jwt-verify
 */
import { createSecretKey, generateKeyPairSync, KeyObject, randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import * as jwt from 'jsonwebtoken';
import { fmt } from './stats';

type Algorithm = 'HS256' | 'ES256';

function perCall(call: () => unknown, n: number): number {
  const start = performance.now();
  for (let i = 0; i < n; i++) call();
  return (performance.now() - start) / n;
}

const secret = randomBytes(48).toString('base64');
const hmacKey = createSecretKey(Buffer.from(secret, 'utf8'));
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const claims = { sub: 'x', sid: 'y' };
const sign = (algorithm: Algorithm, key: KeyObject | string) => jwt.sign(claims, key as jwt.Secret, { algorithm, expiresIn: 900 });
const tokens = { HS256: sign('HS256', hmacKey), ES256: sign('ES256', ec.privateKey) };

const cases: Record<string, () => unknown> = {
  'HS256 verify, string secret': () => jwt.verify(tokens.HS256, secret, { algorithms: ['HS256'] }),
  'HS256 verify, KeyObject    ': () => jwt.verify(tokens.HS256, hmacKey, { algorithms: ['HS256'] }),
  'ES256 verify, KeyObject    ': () => jwt.verify(tokens.ES256, ec.publicKey, { algorithms: ['ES256'] }),
  'HS256 sign, KeyObject      ': () => sign('HS256', hmacKey),
  'ES256 sign, KeyObject      ': () => sign('ES256', ec.privateKey),
};
const n = Number(process.env.BENCH_ROUNDS ?? 3000);
for (const call of Object.values(cases)) perCall(call, 200); // warm-up
const results = Object.fromEntries(Object.keys(cases).map((name) => [name, [] as number[]]));
for (let round = 0; round < 5; round++) for (const [name, call] of Object.entries(cases)) results[name].push(perCall(call, n));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const name of Object.keys(cases)) console.log(`${name}: ${fmt(median(results[name]))} each`);
const m = (name: string) => median(results[name]);
console.log(`HS256 verify, string / KeyObject: ${(m('HS256 verify, string secret') / m('HS256 verify, KeyObject    ')).toFixed(2)}`);
console.log(`verify ES256 / HS256            : ${(m('ES256 verify, KeyObject    ') / m('HS256 verify, KeyObject    ')).toFixed(2)}`);
console.log(
  `sign ES256 / HS256              : ${(m('ES256 sign, KeyObject      ') / m('HS256 sign, KeyObject      ')).toFixed(2)}  (${n} calls x 5 rounds each)`,
);
