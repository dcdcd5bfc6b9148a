/**
 * SQL per request from `pg_stat_database.xact_commit` of the service's database: the
 * transactions committed over an exact number of requests, minus the background rate of an
 * idle window. A statement outside a transaction block is one transaction.
 */
import { performance } from 'node:perf_hooks';
import type { LoadResult } from './load';
import type { CommitCounter } from './service';

/**
 * A backend publishes its counters at commit only if its last flush is 1 s old; otherwise it
 * does so when idle for PGSTAT_IDLE_INTERVAL, 10 s (PostgreSQL 15+, pgstat.c). A window must
 * therefore start and end after more than that without requests, or it loses or gains commits.
 */
export const STATS_QUIET_MS = 11_000;

export interface SqlReport {
  warmupRequests: number;
  requests: number;
  non2xx: number;
  commits: number;
  windowSeconds: number;
  /** The idle window's rate times this window's length. */
  backgroundCommits: number;
  perRequest: number;
}

export interface SqlTarget {
  name: string;
  run: (amount: number) => Promise<LoadResult>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function sqlPerRequest(
  counter: CommitCounter,
  targets: SqlTarget[],
  options: { warmupRequests: number; requests: number; afterEachRun?: () => void },
): Promise<{ targets: Record<string, SqlReport>; idle: { seconds: number; commits: number } }> {
  for (const target of targets) await target.run(options.warmupRequests);
  await sleep(STATS_QUIET_MS);
  const windows: Array<{ name: string; result: LoadResult; commits: number; ms: number }> = [];
  let mark = performance.now();
  let before = await counter.read();
  for (const target of targets) {
    const result = await target.run(options.requests);
    options.afterEachRun?.();
    await sleep(STATS_QUIET_MS);
    const after = await counter.read();
    const now = performance.now();
    windows.push({ name: target.name, result, commits: after - before, ms: now - mark });
    [mark, before] = [now, after];
  }
  // One idle window as long as the longest of them: the rate of what commits without requests.
  const idleMs = Math.max(...windows.map((w) => w.ms));
  await sleep(idleMs);
  const idleCommits = (await counter.read()) - before;
  const idleSeconds = (performance.now() - mark) / 1000;
  const reports: Record<string, SqlReport> = {};
  for (const w of windows) {
    const backgroundCommits = (idleCommits / idleSeconds) * (w.ms / 1000);
    reports[w.name] = {
      warmupRequests: options.warmupRequests,
      requests: w.result.requests,
      non2xx: w.result.non2xx,
      commits: w.commits,
      windowSeconds: w.ms / 1000,
      backgroundCommits,
      perRequest: (w.commits - backgroundCommits) / w.result.requests,
    };
  }
  return { targets: reports, idle: { seconds: idleSeconds, commits: idleCommits } };
}
