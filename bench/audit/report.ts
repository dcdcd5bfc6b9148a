/** The audit bench's table: each measure on the almost empty and the large database, and their ratio. */
import type { CheckpointMeasure, CleanupMeasure, DropMeasure, OrderMeasure, PageMeasure, VerifyMeasure } from './measure';
import type { SeedTimes } from './seed';
import type { Size } from './sizes';

export interface ScenarioResult {
  label: string;
  size: Size;
  seeded: SeedTimes;
  databaseBytes: number;
  /** The server's version and memory settings when measured, and its data directory's file system (data-filesystem.ts). */
  server: { version: string; shared_buffers: string; effective_cache_size: string; max_wal_size: string; dataFilesystem: string };
  /** The closed months rewritten in chain order before the pages (absent with BENCH_AUDIT_ORDER=0). */
  order: OrderMeasure | undefined;
  pages: PageMeasure[];
  verification: VerifyMeasure | undefined;
  /** The first checkpoint after the seed (or, on a reused database, the first of this run). */
  firstCheckpointSeconds: number;
  checkpoint: CheckpointMeasure;
  ended: CleanupMeasure;
  deleted: CleanupMeasure;
  drop: DropMeasure;
}

const num = (x: number) => (x >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(x < 10 ? 2 : 1));

function render(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ')).join('\n');
}

export function printReport(empty: ScenarioResult, large: ScenarioResult): void {
  const sizeOf = (s: ScenarioResult) => `${num(s.size.users)} users, ${num(s.size.sessions)} sessions, ${num(s.size.events)} events`;
  console.log(
    `\nalmost empty: ${sizeOf(empty)}\nlarge (${large.label}): ${sizeOf(large)}, seeded in ${large.seeded.totalSeconds.toFixed(0)} s, ${(large.databaseBytes / 2 ** 30).toFixed(2)} GiB\nPostgreSQL ${large.server.version}, shared_buffers ${large.server.shared_buffers}, effective_cache_size ${large.server.effective_cache_size}, max_wal_size ${large.server.max_wal_size}\ndata directory: ${large.server.dataFilesystem}\n`,
  );
  const rows = [['first page (ms)', 'empty p50', 'p99', 'large p50', 'p99', 'p50 ratio']];
  for (const [i, p] of large.pages.entries()) {
    const e = empty.pages[i];
    rows.push([p.name, num(e.p50), num(e.p99), num(p.p50), num(p.p99), `${(p.p50 / e.p50).toFixed(2)}x`]);
  }
  console.log(render(rows));
  const other = [['measure', 'empty', 'large']];
  if (empty.order && large.order) {
    other.push(['closed months rewritten in chain order', num(empty.order.months), num(large.order.months)]);
    other.push(['rewriting them, s', num(empty.order.seconds), num(large.order.seconds)]);
    other.push(['rewriting them, events/s', num(empty.order.events / empty.order.seconds), num(large.order.events / large.order.seconds)]);
    other.push(['rewriting them, audit_events locked ms (longest swap)', num(empty.order.lockedMs), num(large.order.lockedMs)]);
    other.push(['then CHECKPOINT (their write-back), s', num(empty.order.checkpointSeconds ?? 0), num(large.order.checkpointSeconds ?? 0)]);
  } else {
    other.push(['closed months rewritten in chain order', 'no', 'no']);
  }
  if (empty.verification && large.verification) {
    other.push(['verification, events/s', num(empty.verification.eventsPerSecond), num(large.verification.eventsPerSecond)]);
  }
  other.push(['checkpoint, chains', num(empty.checkpoint.chains), num(large.checkpoint.chains)]);
  other.push(['first checkpoint after the seed (every head), s', num(empty.firstCheckpointSeconds), num(large.firstCheckpointSeconds)]);
  other.push(['checkpoint, s', num(empty.checkpoint.seconds), num(large.checkpoint.seconds)]);
  other.push([
    `checkpoint, slowest of the appends meanwhile, ms`,
    `${num(empty.checkpoint.slowestAppendMs)} of ${empty.checkpoint.appends}`,
    `${num(large.checkpoint.slowestAppendMs)} of ${large.checkpoint.appends}`,
  ]);
  for (const [name, key] of [
    ['cleanup ended', 'ended'],
    ['cleanup deleted', 'deleted'],
  ] as const) {
    other.push([`${name}, sessions/s`, num(empty[key].perSecond), num(large[key].perSecond)]);
    other.push([`${name}, slowest statement ms`, num(empty[key].slowestMs), num(large[key].slowestMs)]);
    other.push([`${name}, statements over 100 ms`, String(empty[key].over100ms), String(large[key].over100ms)]);
    other.push([`${name}, WAL per session, kB`, num(empty[key].walBytesPerSession / 1024), num(large[key].walBytesPerSession / 1024)]);
    other.push([`${name}, checkpoints meanwhile`, String(empty[key].checkpoints), String(large[key].checkpoints)]);
  }
  other.push(['prepare its bases, a day ahead, s', num(empty.drop.prepareSeconds), num(large.drop.prepareSeconds)]);
  other.push(['prepare its bases, chains in the set', num(empty.drop.chains), num(large.drop.chains)]);
  other.push(['drop oldest month, maintain() s', num(empty.drop.seconds), num(large.drop.seconds)]);
  other.push(['drop oldest month, audit_events locked ms', num(empty.drop.lockedMs), num(large.drop.lockedMs)]);
  other.push(['drop oldest month, events in it', num(empty.drop.events), num(large.drop.events)]);
  other.push(['drop oldest month, its files GiB', num(empty.drop.bytes / 2 ** 30), num(large.drop.bytes / 2 ** 30)]);
  other.push(['drop oldest month, DROP TABLE (files removed) ms', num(empty.drop.removeMs), num(large.drop.removeMs)]);
  console.log(`\n${render(other)}\n`);
  if (large.order) {
    for (const m of large.order.perMonth)
      console.log(`rewritten in chain order (large): ${m.name}, ${num(m.events)} events in ${m.seconds.toFixed(1)} s`);
  }
  for (const [name, m] of [
    ['ended', large.ended],
    ['deleted', large.deleted],
    ['drop', large.drop],
  ] as const) {
    console.log(`slowest statement (${name}, large): ${m.slowestMs.toFixed(1)} ms: ${m.slowestStatement}`);
  }
  for (const [name, times] of [
    ['ending overdue sessions', large.ended.statementTime],
    ['deleting sessions past retention', large.deleted.statementTime],
    ['the drop', large.drop.statementTime],
    ["preparing the month's bases", large.drop.prepareStatementTime],
  ] as const) {
    console.log(`statement time of ${name} (large), most first:`);
    for (const s of times) console.log(`  ${s.ms.toFixed(0).padStart(6)} ms in ${String(s.count).padStart(3)} x ${s.statement}`);
  }
}
