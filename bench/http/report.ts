/** The table, the ratios and the JSON file of the http bench. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { median } from '../stats';
import type { LoadResult } from './load';
import type { SqlReport } from './sql-count';

export interface TargetReport {
  label: string;
  unit: 'req/s' | 'compares/s';
  connections: number;
  rounds: LoadResult[];
  median: { rps: number; p50: number; p99: number };
  non2xx: number;
  errors: number;
}

export function targetReport(label: string, unit: TargetReport['unit'], connections: number, rounds: LoadResult[]): TargetReport {
  return {
    label,
    unit,
    connections,
    rounds,
    median: { rps: median(rounds.map((r) => r.rps)), p50: median(rounds.map((r) => r.p50)), p99: median(rounds.map((r) => r.p99)) },
    non2xx: rounds.reduce((n, r) => n + r.non2xx, 0),
    errors: rounds.reduce((n, r) => n + r.errors, 0),
  };
}

const rate = (x: number) => (x >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(1));
const ms = (x: number) => (Number.isNaN(x) ? '–' : x < 10 ? x.toFixed(2) : x.toFixed(1));

export function table(targets: TargetReport[]): string {
  // Rates count 2xx answers only (load.ts): a target with non-2xx or errors is marked.
  const rows = [['target', 'conns', 'rate (median)', 'p50 ms', 'p99 ms', 'non-2xx', 'errors']];
  for (const t of targets) {
    const http = t.unit === 'req/s';
    rows.push([
      t.label,
      String(t.connections),
      `${rate(t.median.rps)} ${t.unit}`,
      ms(t.median.p50),
      ms(t.median.p99),
      http ? String(t.non2xx) : '–',
      http ? String(t.errors) : '–',
    ]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ')).join('\n');
}

export function writeJson(path: string, data: unknown): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(data, null, 2)}\n`);
}

export interface Ratio {
  value: number;
  perRound: number[];
  goal?: number;
}

/** The ratios and SQL counts under the table, each with its goal from issue 7 where it has one. */
export function summary(
  ratios: Record<
    | 'whoamiToBareJwtRemembered'
    | 'whoamiToBareJwt'
    | 'whoamiHs256ToBareJwtHs256'
    | 'whoamiEs256ToHs256'
    | 'usersMeToBareJwtRemembered'
    | 'usersMeToBareJwt'
    | 'healthLiveToBare'
    | 'loginToBcryptBound',
    Ratio
  >,
  whoami: TargetReport,
  sql: { targets: Record<string, SqlReport>; idle: { seconds: number; commits: number } },
  config: { rounds: number; seconds: number; loginSeconds: number },
): string {
  const goal = (r: Ratio) => `${r.goal === undefined ? '' : `  (goal >= ${r.goal})`}  rounds: ${r.perRound.map((x) => x.toFixed(2)).join(', ')}`;
  const sqlLine = (label: string, s: SqlReport) =>
    `SQL per request, ${label}  : ${s.perRequest.toFixed(2)}  (${s.commits} transactions in ${s.windowSeconds.toFixed(1)} s around exactly ` +
    `${s.requests} requests after ${s.warmupRequests} warm-up, minus ${s.backgroundCommits.toFixed(1)} background` +
    `${s.non2xx ? `; ${s.non2xx} non-2xx!` : ''})`;
  return [
    `rates: medians over ${config.rounds} rounds of ${config.seconds} s (login and bcrypt ${Math.max(config.seconds, config.loginSeconds)} s); p50/p99: medians of the rounds'`,
    `ratios: medians of the rounds' ratios (a target and its ceiling run side by side in each round)`,
    `whoami / bare+JWT, ES256    : ${ratios.whoamiToBareJwt.value.toFixed(2)}${goal(ratios.whoamiToBareJwt)}  (the ceiling verifies every request, the service each token once)`,
    `whoami / bare+JWT once, ES256: ${ratios.whoamiToBareJwtRemembered.value.toFixed(2)}${goal(ratios.whoamiToBareJwtRemembered)}  (like for like: both verify each token once)`,
    `whoami / bare+JWT, HS256    : ${ratios.whoamiHs256ToBareJwtHs256.value.toFixed(2)}${goal(ratios.whoamiHs256ToBareJwtHs256)}  (the ceiling verifies every request)`,
    `whoami ES256 / HS256        : ${ratios.whoamiEs256ToHs256.value.toFixed(2)}${goal(ratios.whoamiEs256ToHs256)}`,
    `whoami p99                  : ${whoami.median.p99.toFixed(1)} ms  (goal <= 20 ms)`,
    `/users/me / bare+JWT once   : ${ratios.usersMeToBareJwtRemembered.value.toFixed(2)}`,
    `/users/me / bare+JWT        : ${ratios.usersMeToBareJwt.value.toFixed(2)}`,
    `/health/live / bare         : ${ratios.healthLiveToBare.value.toFixed(2)}${goal(ratios.healthLiveToBare)}`,
    `login / native-bcrypt bound : ${ratios.loginToBcryptBound.value.toFixed(2)}${goal(ratios.loginToBcryptBound)}`,
    sqlLine('whoami   ', sql.targets.whoami),
    sqlLine('/users/me', sql.targets.usersMe),
    `  from pg_stat_database.xact_commit of the service's database (a statement outside a transaction block counts one);`,
    `  background: ${sql.idle.commits} transactions in an idle ${sql.idle.seconds.toFixed(1)} s window as long as the longest, subtracted pro rata`,
  ].join('\n');
}
