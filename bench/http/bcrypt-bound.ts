/**
 * The native-bcrypt bound of `npm run bench -- http`, in its own process: how many bcrypt
 * compares a second this box does at the service's cost, with as many in flight as libuv has
 * threads (UV_THREADPOOL_SIZE, default 4), which is also all the service can run at once.
 * Each `{ seconds }` message runs one round and answers `{ compares, seconds }`.
 */
import * as bcrypt from 'bcrypt';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';

const cost = Number(process.argv[2]);
const parallel = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
// The service compares the base64 HMAC-SHA-256 of a password: 44 characters.
const candidate = randomBytes(32).toString('base64');

async function round(hash: string, seconds: number): Promise<{ compares: number; seconds: number }> {
  const start = performance.now();
  const deadline = start + seconds * 1000;
  let compares = 0;
  const worker = async () => {
    while (performance.now() < deadline) {
      if (!(await bcrypt.compare(candidate, hash))) throw new Error('bcrypt compare failed');
      compares++;
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  // Until the last compare ended, not until the deadline: every compare counted is in the time.
  return { compares, seconds: (performance.now() - start) / 1000 };
}

void bcrypt.hash(candidate, cost).then((hash) => {
  process.on('message', (msg: { seconds: number }) => {
    round(hash, msg.seconds).then(
      (result) => process.send?.(result),
      (error: Error) => process.send?.({ error: error.message }),
    );
  });
  process.send?.({ ready: true, parallel });
});
process.on('disconnect', () => process.exit(0));
