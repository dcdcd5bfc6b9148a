/** `npm run bench [-- name...]`: runs bench/<name>.bench.js (all by default), one after another. */
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

const wanted = process.argv.slice(2);
const benches = readdirSync(__dirname)
  .filter((f) => f.endsWith('.bench.js'))
  .filter((f) => !wanted.length || wanted.some((w) => f.startsWith(w)));
for (const file of benches) {
  console.log(`\n== ${file.replace('.bench.js', '')} ==`);
  execFileSync(process.execPath, [join(__dirname, file)], { stdio: 'inherit', env: { NODE_ENV: 'test', ...process.env } });
}
