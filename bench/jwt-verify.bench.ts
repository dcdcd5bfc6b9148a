/**
 * Why the JWT secret is handed over as a KeyObject: jsonwebtoken re-imports a string secret on
 * every sign and verify. Both measured side by side in one run.
 *   npm run bench -- jwt-verify
 */
import { createSecretKey, randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import * as jwt from 'jsonwebtoken';
import { fmt } from './stats';

function perVerify(token: string, key: string | ReturnType<typeof createSecretKey>, n: number): number {
  const start = performance.now();
  for (let i = 0; i < n; i++) jwt.verify(token, key as jwt.Secret, { algorithms: ['HS256'] });
  return (performance.now() - start) / n;
}

const secret = randomBytes(48).toString('base64');
const keyObject = createSecretKey(Buffer.from(secret, 'utf8'));
const token = jwt.sign({ sub: 'x', sid: 'y' }, secret, { algorithm: 'HS256', expiresIn: 900 });
const n = Number(process.env.BENCH_ROUNDS ?? 5000);
perVerify(token, secret, 200);
perVerify(token, keyObject, 200);
const results = { string: [] as number[], keyObject: [] as number[] };
for (let round = 0; round < 5; round++) {
  results.string.push(perVerify(token, secret, n));
  results.keyObject.push(perVerify(token, keyObject, n));
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(`verify with a string secret : ${fmt(median(results.string))} each`);
console.log(`verify with a KeyObject     : ${fmt(median(results.keyObject))} each`);
console.log(`ratio string/KeyObject      : ${(median(results.string) / median(results.keyObject)).toFixed(2)}  (${n} verifies x 5 rounds each)`);
