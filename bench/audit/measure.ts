/** The measures of the audit bench, on a booted application context over a seeded database. */
import type { INestApplicationContext } from '@nestjs/common';
import type { Client } from 'pg';
import { AuditBaseSets } from '../../src/audit/audit-base-sets';
import { AuditMonthOrder } from '../../src/audit/audit-month-order';
import { AuditShipDestinations } from '../../src/audit/audit-ship-destinations';
import { AuditChainService } from '../../src/audit/audit-chain.service';
import { AuditExportService } from '../../src/audit/audit-export.service';
import { AuditPartitionsService, monthOf } from '../../src/audit/audit-partitions.service';
import { AuditVerifierService } from '../../src/audit/audit-verifier.service';
import { AuditQuery, AuditService } from '../../src/audit/audit.service';
import { SessionsCleanupTask } from '../../src/sessions/sessions-cleanup.task';
import { DataSource } from 'typeorm';
import { ConfigService } from '@nestjs/config';
import type { AppConfig } from '../../src/config/config';
import { quantile } from '../stats';
import { benchUserId, seedCleanupSessions } from './seed';
import { recordStatements, slowest, type StatementTiming } from './statements';
import { SESSIONARY_DATA_SOURCE_TOKEN } from '../../src/database/data-source-name';

export interface PageMeasure {
  name: string;
  p50: number;
  p99: number;
  /** Items on the measured page (the same filter returns a full page on both databases). */
  items: number;
}

/** The page queries: a user's own page and every admin filter path, at fixed instants in the seeded range. */
export function pageQueries(eventsFrom: Date, eventsTo: Date, randomUser: () => string): Array<{ name: string; query: () => AuditQuery }> {
  const span = eventsTo.getTime() - eventsFrom.getTime();
  const at = (fraction: number) => new Date(eventsFrom.getTime() + span * fraction);
  const mid = at(0.5);
  const week = new Date(mid.getTime() + 7 * 86_400_000);
  const limit = 20;
  return [
    { name: 'user: own page', query: () => ({ limit, userId: randomUser() }) },
    { name: 'admin: no filter', query: () => ({ limit }) },
    { name: 'admin: type (common)', query: () => ({ limit, type: 'LOGIN' }) },
    { name: 'admin: type (rare)', query: () => ({ limit, type: 'ROLE_CHANGED' }) },
    { name: 'admin: userId', query: () => ({ limit, userId: randomUser() }) },
    { name: 'admin: from', query: () => ({ limit, from: mid }) },
    { name: 'admin: to', query: () => ({ limit, to: mid }) },
    { name: 'admin: from+to', query: () => ({ limit, from: mid, to: week }) },
    { name: 'admin: type+from', query: () => ({ limit, type: 'LOGIN', from: mid }) },
    { name: 'admin: type+to', query: () => ({ limit, type: 'LOGIN', to: mid }) },
    { name: 'admin: type+from+to', query: () => ({ limit, type: 'LOGIN', from: mid, to: week }) },
    { name: 'admin: rare type+to', query: () => ({ limit, type: 'ROLE_CHANGED', to: mid }) },
    { name: 'admin: userId+type', query: () => ({ limit, userId: randomUser(), type: 'LOGIN' }) },
    { name: 'admin: userId+from+to', query: () => ({ limit, userId: randomUser(), from: at(0.25), to: at(0.75) }) },
    { name: 'admin: userId+type+from+to', query: () => ({ limit, userId: randomUser(), type: 'TOKEN_REFRESH', from: at(0.25), to: at(0.75) }) },
  ];
}

/** p50/p99 in ms of each page query over `runs` runs, after a fifth as many warm-up runs. */
export async function measurePages(app: INestApplicationContext, queries: ReturnType<typeof pageQueries>, runs: number): Promise<PageMeasure[]> {
  const audit = app.get(AuditService);
  const results: PageMeasure[] = [];
  for (const { name, query } of queries) {
    const samples: number[] = [];
    let items = 0;
    for (let i = 0; i < Math.ceil(runs / 5); i++) await audit.list(query());
    for (let i = 0; i < runs; i++) {
      const q = query();
      const started = performance.now();
      const page = await audit.list(q);
      samples.push(performance.now() - started);
      items = Math.max(items, page.items.length);
    }
    samples.sort((a, b) => a - b);
    results.push({ name, p50: quantile(samples, 0.5), p99: quantile(samples, 0.99), items });
  }
  return results;
}

/** A random user among those that have events (the i-th bench user). */
export function randomBenchUser(users: number): () => string {
  return () => {
    return benchUserId(1 + Math.floor(Math.random() * users));
  };
}

export interface VerifyMeasure {
  ok: boolean;
  events: number;
  seconds: number;
  eventsPerSecond: number;
}

export async function measureVerification(app: INestApplicationContext): Promise<VerifyMeasure> {
  const started = performance.now();
  const result = await app.get(AuditVerifierService).verify();
  const seconds = (performance.now() - started) / 1000;
  if (!result.ok) throw new Error(`the seeded log does not verify: ${result.reason}`);
  return { ok: result.ok, events: result.checked, seconds, eventsPerSecond: result.checked / seconds };
}

export interface CheckpointMeasure {
  /** Chains the checkpoint digested. */
  chains: number;
  /** Chains changed since the last checkpoint (one event each), the ones it copies. */
  changed: number;
  seconds: number;
  /** Appends to the changed chains while it ran, one after another, and the slowest of them. */
  appends: number;
  slowestAppendMs: number;
}

/**
 * A checkpoint (of every head) while users whose chains changed since the last one keep
 * appending to them, as their logins and refreshes would: how long it takes, and the longest
 * any of those appends took meanwhile. They run in this process, so their times include its
 * pauses while it digests the heads (an instance serving requests as it writes a checkpoint).
 */
export async function measureCheckpoint(app: INestApplicationContext, users: number, changed: number): Promise<CheckpointMeasure> {
  const chain = app.get(AuditChainService);
  const audit = app.get(AuditService);
  const dataSource = app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN);
  const append = (userId: string) => dataSource.transaction((em) => audit.record(em, { type: 'TOKEN_REFRESH', userId }));
  await chain.checkpoint(true);
  const picked = new Set<string>();
  const randomUser = randomBenchUser(users);
  while (picked.size < Math.min(changed, users)) picked.add(randomUser());
  const userIds = [...picked];
  for (const userId of userIds) await append(userId);
  let running = true;
  const samples: number[] = [];
  const appending = (async () => {
    for (let i = 0; running; i++) {
      const started = performance.now();
      await append(userIds[i % userIds.length]);
      samples.push(performance.now() - started);
    }
  })();
  const started = performance.now();
  const checkpoint = await chain.checkpoint(true);
  const seconds = (performance.now() - started) / 1000;
  running = false;
  await appending;
  if (!checkpoint) throw new Error('the measured checkpoint was not written (another one ran?)');
  return { chains: checkpoint.chains, changed: userIds.length, seconds, appends: samples.length, slowestAppendMs: Math.max(...samples) };
}

export interface CleanupMeasure {
  sessions: number;
  seconds: number;
  perSecond: number;
  statements: number;
  slowestMs: number;
  slowestStatement: string;
  /** Statements over 100 ms. */
  over100ms: number;
  /**
   * WAL the server wrote while the cleanup ran, per session, in bytes (the distance between two
   * WAL insert positions: exact, and the whole server's, which only this bench is using). Less
   * noisy than the rate: at scale the rate is set by the pages each session dirties, and nearly
   * all of this is those pages logged whole after a checkpoint.
   */
  walBytesPerSession: number;
  /**
   * Checkpoints the server completed while the cleanup ran (timed or requested, e.g. because
   * `max_wal_size` filled). Each one makes the next write of every page a whole-page image in
   * the WAL, and its write-back competes with the batches: with the machine's 1GB, 100k ended
   * sessions at 50M events brought one every 2–3 s (docs/benchmarks.md, *Scale*).
   */
  checkpoints: number;
  /** Where the statement time went: statements grouped by their text's start, most time first. */
  statementTime: Array<{ statement: string; count: number; ms: number }>;
}

/**
 * Seeds `n` sessions of the given kind, then runs the cleanup task until it has nothing left
 * (one run stops at its time budget), timing every statement it sends.
 */
export async function measureCleanup(
  app: INestApplicationContext,
  seeder: Client,
  users: number,
  n: number,
  kind: 'overdue' | 'pastRetention',
): Promise<CleanupMeasure> {
  await seedCleanupSessions(seeder, users, n, kind);
  const task = app.get(SessionsCleanupTask);
  const walPosition = async () => (await seeder.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0].lsn;
  const walBefore = await walPosition();
  const checkpointsBefore = await checkpointsCompleted(seeder);
  const {
    result: done,
    statements,
    seconds,
  } = await recordStatements(async () => {
    let total = 0;
    for (;;) {
      const r = await task.run();
      if (r.skipped) throw new Error('the cleanup was skipped: another instance holds its lock');
      const n = kind === 'overdue' ? r.expired : r.deleted;
      total += n;
      if (!n) return total;
    }
  });
  if (done !== n) throw new Error(`the cleanup handled ${done} sessions of ${n} seeded (${kind})`);
  const walAfter = await walPosition();
  const checkpoints = (await checkpointsCompleted(seeder)) - checkpointsBefore;
  const {
    rows: [{ bytes }],
  } = await seeder.query<{ bytes: string }>('SELECT pg_wal_lsn_diff($1, $2)::text AS bytes', [walAfter, walBefore]);
  const top = slowest(statements);
  return {
    sessions: done,
    seconds,
    perSecond: done / seconds,
    statements: statements.length,
    slowestMs: top.ms,
    slowestStatement: top.text,
    over100ms: statements.filter((s) => s.ms > 100).length,
    statementTime: timeByStatement(statements).slice(0, 6),
    walBytesPerSession: Number(bytes) / done,
    checkpoints,
  };
}

/** The server's completed checkpoints so far (PostgreSQL 17 moved the counts to pg_stat_checkpointer). */
async function checkpointsCompleted(client: Client): Promise<number> {
  const {
    rows: [{ version }],
  } = await client.query<{ version: number }>(`SELECT current_setting('server_version_num')::int AS version`);
  const text =
    version >= 170000
      ? 'SELECT (num_timed + num_requested)::int AS n FROM pg_stat_checkpointer'
      : 'SELECT (checkpoints_timed + checkpoints_req)::int AS n FROM pg_stat_bgwriter';
  return (await client.query<{ n: number }>(text)).rows[0].n;
}

export interface DropMeasure {
  partition: string;
  events: number;
  /**
   * The maintain() run a day before the month is due, which prepares its chains' bases (in
   * the background, ahead of the drop): seconds, and the chains in the set.
   */
  prepareSeconds: number;
  chains: number;
  /** The maintain() run that drops it: the check that the month did not change, DETACH and DROP. */
  seconds: number;
  /** From the DETACH's start to its transaction's COMMIT: audit_events locked, every audited write waiting. */
  lockedMs: number;
  /** The month's table and indexes on disk before the drop, bytes. */
  bytes: number;
  /** Its DROP TABLE after the DETACH: the files removed (the file system's cost: data-filesystem.ts). */
  removeMs: number;
  slowestMs: number;
  slowestStatement: string;
  /** Where the drop's statement time went: statements grouped by their text's start, most time first. */
  statementTime: Array<{ statement: string; count: number; ms: number }>;
  /** The same for the preparation. */
  prepareStatementTime: Array<{ statement: string; count: number; ms: number }>;
}

export interface OrderMeasure {
  months: number;
  events: number;
  seconds: number;
  /** Each month's rewrite, newest first. */
  perMonth: Array<{ name: string; events: number; seconds: number }>;
  /** The longest of the swaps: from the lock on audit_events to its transaction's COMMIT. */
  lockedMs: number;
  /** The CHECKPOINT the bench runs after them, so that their write-back does not land on the next measures. */
  checkpointSeconds?: number;
}

/** A partitions service whose configuration differs from the app's in `overrides`. */
function partitionsWith(app: INestApplicationContext, overrides: Record<string, unknown>): AuditPartitionsService {
  const config = app.get(ConfigService);
  return new AuditPartitionsService(
    app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN),
    app.get(AuditChainService),
    app.get(AuditExportService),
    app.get(AuditBaseSets),
    app.get(AuditMonthOrder),
    app.get(AuditShipDestinations),
    {
      get: (name: string, options?: unknown) => (name in overrides ? overrides[name] : config.get(name, options as never)),
    } as unknown as ConfigService<AppConfig, true>,
  );
}

/**
 * Rewrites the closed months in chain order as the partitions job does, one a maintain() run
 * with AUDIT_ORDER_CLOSED_MONTHS on (the bench's app has it off so that its boot does not start
 * it), run after run until none is left.
 */
export async function measureMonthOrder(app: INestApplicationContext, progress: (line: string) => void): Promise<OrderMeasure> {
  const partitions = partitionsWith(app, { AUDIT_ORDER_CLOSED_MONTHS: true });
  const measure: OrderMeasure = { months: 0, events: 0, seconds: 0, perMonth: [], lockedMs: 0 };
  for (;;) {
    const { result, statements, seconds } = await recordStatements(() => partitions.maintain());
    if (result.orderHeld.length) throw new Error(`a month was not rewritten: ${JSON.stringify(result.orderHeld)}`);
    if (!result.ordered.length) return measure;
    const [month] = result.ordered;
    progress(`${month.name}: ${month.events.toLocaleString('en-US')} events in ${month.seconds.toFixed(1)} s`);
    measure.months++;
    measure.events += month.events;
    measure.seconds += seconds;
    measure.perMonth.push(month);
    measure.lockedMs = Math.max(measure.lockedMs, lockedFrom(statements, /^LOCK TABLE ONLY audit_events IN ACCESS EXCLUSIVE MODE/));
  }
}

/**
 * Drops the oldest month as production does: AuditPartitionsService.maintain() first with
 * AUDIT_RETENTION_DAYS one day longer (the month is due within a day: its bases are prepared),
 * then with the retention that makes exactly the oldest month due.
 */
export async function measurePartitionDrop(app: INestApplicationContext): Promise<DropMeasure> {
  const base = app.get(AuditPartitionsService);
  const [oldest, second] = await base.list();
  const [{ now }] = (await app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN).query('SELECT now() AS now')) as Array<{ now: Date }>;
  const days = Math.floor((now.getTime() - oldest.to.getTime()) / 86_400_000);
  if (now.getTime() - days * 86_400_000 >= second.to.getTime()) throw new Error('no retention drops exactly the oldest month');
  const withRetention = (retention: number) => partitionsWith(app, { AUDIT_RETENTION_DAYS: retention });

  const preparation = await recordStatements(() => withRetention(days + 1).maintain());
  const sets = await app.get(AuditBaseSets).list(app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN).manager);
  const set = sets.find((s) => s.month === monthOf(oldest));
  if (preparation.result.dropped.length || !set)
    throw new Error(`expected ${oldest.name}'s bases prepared and nothing dropped, got ${JSON.stringify(preparation.result)}`);

  const [{ bytes }] = (await app
    .get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN)
    .query(`SELECT pg_total_relation_size($1::regclass)::float8 AS bytes`, [`"${oldest.name}"`])) as Array<{ bytes: number }>;
  const { result, statements, seconds } = await recordStatements(() => withRetention(days).maintain());
  if (result.dropped.length !== 1 || result.dropped[0].name !== oldest.name) {
    throw new Error(`expected ${oldest.name} dropped, got ${JSON.stringify(result)}`);
  }
  const top = slowest(statements);
  return {
    partition: oldest.name,
    events: result.dropped[0].events,
    prepareSeconds: preparation.seconds,
    chains: set.chains,
    seconds,
    lockedMs: lockedByDetach(statements),
    bytes,
    removeMs: result.dropped[0].removeMs,
    slowestMs: top.ms,
    slowestStatement: top.text,
    statementTime: timeByStatement(statements).slice(0, 6),
    prepareStatementTime: timeByStatement(preparation.statements).slice(0, 6),
  };
}

/** From the start of DETACH PARTITION to the end of the COMMIT after it (one connection, statements in order). */
function lockedByDetach(statements: StatementTiming[]): number {
  return lockedFrom(statements, /DETACH PARTITION/);
}

/** From the start of the first statement matching `locking` to the end of the COMMIT after it. */
function lockedFrom(statements: StatementTiming[], locking: RegExp): number {
  const lock = statements.findIndex((s) => locking.test(s.text));
  const commit = statements.findIndex((s, i) => i > lock && /^COMMIT/i.test(s.text.trim()));
  if (lock < 0 || commit < 0) throw new Error(`no statement matching ${locking} followed by a COMMIT`);
  return statements[commit].endedAt - (statements[lock].endedAt - statements[lock].ms);
}

/** Statements grouped by the first 60 characters of their one-line text, most total time first. */
function timeByStatement(statements: Array<{ text: string; ms: number }>): DropMeasure['statementTime'] {
  const groups = new Map<string, { statement: string; count: number; ms: number }>();
  for (const s of statements) {
    const statement = s.text.replace(/\s+/g, ' ').trim().slice(0, 60);
    const group = groups.get(statement) ?? { statement, count: 0, ms: 0 };
    group.count++;
    group.ms += s.ms;
    groups.set(statement, group);
  }
  return [...groups.values()].sort((a, b) => b.ms - a.ms);
}
