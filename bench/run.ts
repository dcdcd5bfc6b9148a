/**
 * `npm run bench [-- name... --flag...]`: runs bench/<name>.bench.js (all by default), one after
 * another, each given the flags (e.g. `npm run bench -- audit --small`).
 */
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

const args = process.argv.slice(2);
const wanted = args.filter((a) => !a.startsWith('--'));
const flags = args.filter((a) => a.startsWith('--'));
const benches = readdirSync(__dirname)
  .filter((f) => f.endsWith('.bench.js'))
  .filter((f) => !wanted.length || wanted.some((w) => f.startsWith(w)));
for (const file of benches) {
  console.log(`\n== ${file.replace('.bench.js', '')} ==`);
  execFileSync(process.execPath, [join(__dirname, file), ...flags], { stdio: 'inherit', env: { NODE_ENV: 'test', ...process.env } });
}
