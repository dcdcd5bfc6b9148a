/**
 * Seeds a bench database: users and sessions with set-based SQL (generate_series), and audit
 * events properly chained (each event's HMAC needs the key, so Node computes the chains while
 * PostgreSQL parses the rows already sent: one COPY). Events are
 * written in time order, so `seq` rises with `created_at` as it does in production, spread over
 * `months` months (one partition each).
 *
 * The indexes of the tables being filled are dropped first and built again after, from their
 * own definitions (pg_get_indexdef / pg_get_constraintdef), which is much faster than keeping
 * them up to date row by row. The rebuilt indexes are compact, unlike a production table's.
 */
import { createHash, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { finished } from 'node:stream/promises';
import type { Client } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { auditEventId } from '../../src/audit/audit-event-id';
import { canonicalJson, eventHash, GENESIS_HASH, GLOBAL_CHAIN, type ChainedEvent } from '../../src/audit/audit-chain';
import { AUDIT_EVENT_TYPES, type AuditEventType } from '../../src/audit/audit-event.entity';
import type { Size } from './sizes';

const EVENT_BATCH = 5000;
const HEADS_BATCH = 10_000;
const DAY_MS = 86_400_000;
/** Any bcrypt-shaped string: nobody logs in to the bench's users. */
const PASSWORD_HASH = `$2b$12$${'x'.repeat(53)}`;

/** A deterministic user id for the i-th user (1-based), the same in SQL and in Node. */
export function benchUserIdSql(i: string): string {
  return `md5('bench-user-' || (${i}))::uuid`;
}
export function benchUserId(i: number): string {
  const h = createHash('md5').update(`bench-user-${i}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Event types by weight: what a session service writes most, and a few rare ones. */
const TYPE_WEIGHTS: Array<[AuditEventType, number]> = [
  ['TOKEN_REFRESH', 400],
  ['LOGIN', 250],
  ['SESSION_EXPIRED', 120],
  ['LOGOUT', 100],
  ['LOGIN_FAILED', 80],
  ['SESSION_REVOKED', 20],
  ['PASSWORD_CHANGED', 8],
  ['PROFILE_UPDATED', 8],
  ['ACCESS_DENIED', 5],
  ['REGISTER', 4],
  ['REFRESH_FAILED', 3],
  ['ACCOUNT_LOCKED', 1],
  ['REFRESH_TOKEN_REUSE', 0.5],
  ['ROLE_CHANGED', 0.1],
];
for (const [type] of TYPE_WEIGHTS) if (!AUDIT_EVENT_TYPES.includes(type)) throw new Error(`unknown event type ${type}`);
const TYPE_TOTAL = TYPE_WEIGHTS.reduce((n, [, w]) => n + w, 0);

const USER_AGENTS = [
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/141.0 Safari/537.36',
  'Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1',
  'Mozilla/5.0 (X11; Linux x86_64; rv:139.0) Gecko/20100101 Firefox/139.0',
];

/** mulberry32: a small deterministic PRNG, so two runs seed the same log. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pickType(r: number): AuditEventType {
  let x = r * TYPE_TOTAL;
  for (const [type, w] of TYPE_WEIGHTS) {
    if (x < w) return type;
    x -= w;
  }
  return 'LOGIN';
}

/** `YYYY-MM-DDTHH:MM:SS.ffffffZ` for microseconds since the epoch: the text the chain hashes. */
function microsText(micros: number): string {
  const ms = Math.floor(micros / 1000);
  return `${new Date(ms).toISOString().slice(0, 23)}${String(micros - ms * 1000).padStart(3, '0')}Z`;
}

/**
 * Drops the indexes of `table` (and its foreign keys, and its primary key when asked) and
 * returns the statements that make them again, primary key first, foreign keys last.
 */
export async function dropIndexes(client: Client, table: string, primaryKey: boolean): Promise<string[]> {
  const { rows: constraints } = await client.query<{ name: string; def: string; type: string }>(
    `SELECT conname AS name, pg_get_constraintdef(oid) AS def, contype AS type FROM pg_constraint
      WHERE conrelid = $1::regclass AND (contype = 'f' OR (contype = 'p' AND $2))`,
    [table, primaryKey],
  );
  const { rows: indexes } = await client.query<{ name: string; def: string }>(
    `SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
      WHERE i.indrelid = $1::regclass AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)`,
    [table],
  );
  for (const c of constraints) await client.query(`ALTER TABLE "${table}" DROP CONSTRAINT "${c.name}"`);
  for (const i of indexes) await client.query(`DROP INDEX "${i.name}"`);
  const add = (c: { name: string; def: string }) => `ALTER TABLE "${table}" ADD CONSTRAINT "${c.name}" ${c.def}`;
  return [
    ...constraints.filter((c) => c.type === 'p').map(add),
    // A partitioned table's index reads `ON ONLY` (the parent alone); without it, every partition gets one.
    ...indexes.map((i) => i.def.replace(' ON ONLY ', ' ON ')),
    ...constraints.filter((c) => c.type === 'f').map(add),
  ];
}

export interface SeedTimes {
  usersSeconds: number;
  sessionsSeconds: number;
  eventsSeconds: number;
  indexSeconds: number;
  analyzeSeconds: number;
  totalSeconds: number;
  /** The oldest and newest created_at of the events. */
  eventsFrom: string;
  eventsTo: string;
  chains: number;
}

const seconds = (since: number) => (performance.now() - since) / 1000;

export async function seed(client: Client, size: Size, key: string, months: number, progress: (line: string) => void): Promise<SeedTimes> {
  const started = performance.now();
  // This connection only: bigger sorts for the index builds; a crash loses nothing that matters here.
  await client.query(`SET maintenance_work_mem = '512MB'`);
  await client.query(`SET synchronous_commit = off`);
  const {
    rows: [{ now }],
  } = await client.query<{ now: Date }>(`SELECT now() AS now`);
  const end = now.getTime() - 60_000;
  const start = end - months * 30 * DAY_MS;
  await createPartitions(client, new Date(start));

  let t = performance.now();
  progress(`seeding ${size.users.toLocaleString('en-US')} users`);
  await client.query(
    `INSERT INTO users (id, username, email, password_hash, created_at, updated_at)
     SELECT ${benchUserIdSql('i')}, 'bench' || i, 'bench' || i || '@bench.test', $2, $3::timestamptz, $3::timestamptz
       FROM generate_series(1, $1::int) AS i`,
    [size.users, PASSWORD_HASH, new Date(start - DAY_MS)],
  );
  const usersSeconds = seconds(t);

  t = performance.now();
  progress(`seeding ${size.sessions.toLocaleString('en-US')} sessions`);
  const sessionIndexes = await dropIndexes(client, 'sessions', false);
  // 90 % ended within retention (logged out), 10 % active; none due for the cleanup (see seedCleanupSessions).
  await client.query(
    `INSERT INTO sessions (user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at, refresh_token_hash,
                           refresh_expires_at, ended_at, end_reason, ip_address, user_agent)
     SELECT ${benchUserIdSql('1 + i % $2::int')}, c, c, c + interval '30 minutes' + CASE WHEN active THEN now() - c ELSE interval '0' END,
            c + interval '30 days', md5('s' || i) || md5('t' || i), c + interval '30 days',
            CASE WHEN active THEN NULL ELSE c + interval '20 minutes' END, CASE WHEN active THEN NULL ELSE 'logout' END,
            '203.0.113.' || (i % 250), 'bench'
       FROM generate_series(1, $1::int) AS i,
            LATERAL (SELECT i % 10 = 0 AS active) a,
            LATERAL (SELECT now() - CASE WHEN active THEN random() * interval '1 day' ELSE interval '1 day' + random() * interval '28 days' END AS c) t`,
    [size.sessions, size.users],
  );
  const sessionsSeconds = seconds(t);

  t = performance.now();
  progress(`seeding ${size.events.toLocaleString('en-US')} chained audit events over ${months} months`);
  const eventIndexes = await dropIndexes(client, 'audit_events', true);
  const chains = await seedEvents(client, size, key, start, end, progress);
  const eventsSeconds = seconds(t);

  t = performance.now();
  progress('building the indexes again');
  for (const statement of [...sessionIndexes, ...eventIndexes]) await client.query(statement);
  const indexSeconds = seconds(t);

  t = performance.now();
  progress('VACUUM ANALYZE');
  await client.query('VACUUM ANALYZE users, sessions, audit_events, audit_chain_heads');
  const analyzeSeconds = seconds(t);
  return {
    usersSeconds,
    sessionsSeconds,
    eventsSeconds,
    indexSeconds,
    analyzeSeconds,
    totalSeconds: seconds(started),
    eventsFrom: new Date(start).toISOString(),
    eventsTo: new Date(end).toISOString(),
    chains,
  };
}

/** The monthly partitions (same names as AuditPartitionsService) from `from`'s month on; existing ones are kept. */
async function createPartitions(client: Client, from: Date): Promise<void> {
  await client.query(
    `DO $$
     DECLARE
       month timestamptz := date_trunc('month', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
     BEGIN
       WHILE month < now() LOOP
         EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
           'audit_events_' || to_char(month AT TIME ZONE 'UTC', '"y"YYYY"m"MM'), month, (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC');
         month := (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
       END LOOP;
     END $$`.replace('$1::timestamptz', `'${from.toISOString()}'::timestamptz`),
  );
}

const COPY_EVENTS = `COPY audit_events (id, type, user_id, session_id, ip_address, user_agent, metadata, created_at, chain_key, chain_pos, prev_hash, hash) FROM STDIN`;

/** A value in COPY's text format: NULL as \\N; backslash, tab, newline and carriage return escaped. */
function copyText(value: string | number | null): string {
  if (value === null) return '\\N';
  const text = String(value);
  return /[\\\t\n\r]/.test(text) ? text.replace(/[\\\t\n\r]/g, (c) => ({ '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' })[c]!) : text;
}

/** Returns the number of chains. */
async function seedEvents(client: Client, size: Size, key: string, start: number, end: number, progress: (line: string) => void): Promise<number> {
  const random = prng(8);
  const userIds = Array.from({ length: size.users }, (_, i) => benchUserId(i + 1));
  // Index size.users is the global chain (events without a user).
  const positions = new Float64Array(size.users + 1);
  const hashes: string[] = new Array<string>(size.users + 1).fill(GENESIS_HASH);
  // Each chain's last event time: the head's last_event_at, as the service keeps it.
  const lastMicros = new Float64Array(size.users + 1);
  const startMicros = start * 1000;
  const stepMicros = ((end - start) * 1000) / size.events;
  // One COPY for all of them: PostgreSQL parses rows while Node chains the next ones (the
  // stream's buffer, with backpressure), several times faster than multi-row INSERTs.
  const copy = client.query(copyFrom(COPY_EVENTS));
  const copied = finished(copy);
  let lastReport = performance.now();
  for (let done = 0; done < size.events; done += EVENT_BATCH) {
    const n = Math.min(EVENT_BATCH, size.events - done);
    const lines = new Array<string>(n);
    for (let j = 0; j < n; j++) {
      const i = done + j;
      const type = pickType(random());
      const anonymous = type === 'LOGIN_FAILED' && random() < 0.5;
      const u = anonymous ? size.users : Math.floor(random() * size.users);
      const userId = anonymous ? null : userIds[u];
      const metadata =
        type === 'SESSION_EXPIRED' ? { reason: 'idle_timeout', detectedBy: 'cleanup' } : type === 'LOGIN_FAILED' ? { reason: 'bad_password' } : {};
      const micros = Math.floor(startMicros + i * stepMicros);
      const event: ChainedEvent = {
        id: auditEventId(micros / 1000), // as the service makes them
        type,
        userId,
        sessionId: type === 'LOGIN_FAILED' || type === 'REGISTER' ? null : randomUUID(),
        ipAddress: `203.0.113.${u % 250}`,
        userAgent: USER_AGENTS[u % USER_AGENTS.length],
        metadata: canonicalJson(metadata),
        createdAt: microsText(micros),
        chainKey: userId ?? GLOBAL_CHAIN,
        position: positions[u] + 1,
      };
      const prevHash = hashes[u];
      const hash = eventHash(key, prevHash, event);
      positions[u] = event.position;
      hashes[u] = hash;
      lastMicros[u] = micros;
      lines[j] = [
        event.id,
        type,
        userId,
        event.sessionId,
        event.ipAddress,
        event.userAgent,
        event.metadata,
        event.createdAt,
        event.chainKey,
        event.position,
        prevHash,
        hash,
      ]
        .map(copyText)
        .join('\t');
    }
    if (!copy.write(`${lines.join('\n')}\n`)) await once(copy, 'drain');
    if (performance.now() - lastReport > 30_000) {
      lastReport = performance.now();
      progress(`  ${(done + n).toLocaleString('en-US')} events`);
    }
  }
  copy.end();
  await copied;

  // The chain heads: each chain's last position, hash and event time.
  const heads: Array<[string, number, string, string]> = [];
  for (let u = 0; u <= size.users; u++) {
    if (positions[u] > 0) heads.push([u === size.users ? GLOBAL_CHAIN : userIds[u], positions[u], hashes[u], microsText(lastMicros[u])]);
  }
  for (let i = 0; i < heads.length; i += HEADS_BATCH) {
    const batch = heads.slice(i, i + HEADS_BATCH);
    await client.query(
      `INSERT INTO audit_chain_heads (chain_key, position, hash, last_event_at)
       SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[])`,
      [batch.map((h) => h[0]), batch.map((h) => h[1]), batch.map((h) => h[2]), batch.map((h) => h[3])],
    );
  }
  return heads.length;
}

/**
 * The cleanup's work: `n` sessions past their idle deadline (ended by the cleanup, each with a
 * SESSION_EXPIRED event) and `n` sessions ended past retention (deleted), of random users.
 * Returns the retention, in seconds, that makes exactly the latter due.
 */
export async function seedCleanupSessions(client: Client, users: number, n: number, kind: 'overdue' | 'pastRetention'): Promise<void> {
  const tag = `${kind}-${Date.now()}-`;
  const user = benchUserIdSql('1 + floor(random() * $2::int)::int');
  if (kind === 'overdue') {
    await client.query(
      `INSERT INTO sessions (user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at, refresh_token_hash, refresh_expires_at, ip_address, user_agent)
       SELECT ${user}, d - interval '30 minutes', d - interval '30 minutes', d, d + interval '30 days',
              md5($3 || i) || md5($3 || 'x' || i), d + interval '30 days', '203.0.113.9', 'bench'
         FROM generate_series(1, $1::int) AS i, LATERAL (SELECT now() - interval '1 minute' - random() * interval '1 hour' AS d) t`,
      [n, users, tag],
    );
  } else {
    await client.query(
      `INSERT INTO sessions (user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at, refresh_token_hash, refresh_expires_at,
                             ended_at, end_reason, ip_address, user_agent)
       SELECT ${user}, e - interval '1 hour', e - interval '1 hour', e, e + interval '29 days',
              md5($3 || i) || md5($3 || 'x' || i), e + interval '29 days', e, 'logout', '203.0.113.9', 'bench'
         FROM generate_series(1, $1::int) AS i, LATERAL (SELECT now() - interval '31 days' - random() * interval '5 days' AS e) t`,
      [n, users, tag],
    );
  }
  // Vacuumed as autovacuum would have by now: on a reused database the sessions an earlier run
  // ended and deleted have left dead rows and index entries, which every batch would step over.
  await client.query('VACUUM (ANALYZE) sessions');
}
