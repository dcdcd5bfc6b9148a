/** The sizes of the audit bench's databases: the large one (configurable) and the almost empty one. */

export interface Size {
  users: number;
  sessions: number;
  events: number;
}

/** The size: what the figures in the README are meant for. */
export const DEFAULT_SIZE: Size = { users: 1_000_000, sessions: 10_000_000, events: 50_000_000 };
/** `--small` or BENCH_AUDIT_SIZE=small: a CI-sized run. */
export const SMALL_SIZE: Size = { users: 10_000, sessions: 100_000, events: 500_000 };
/** The baseline every ratio is taken against. */
export const EMPTY_SIZE: Size = { users: 100, sessions: 1_000, events: 10_000 };

function positive(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw.replace(/_/g, ''));
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer`);
  return value;
}

export interface AuditBenchConfig {
  size: Size;
  sizeName: string;
  /** Timed runs of each page query (after as many warm-up runs as a fifth of them). */
  runs: number;
  /** Overdue sessions to end, and ended sessions past retention to delete, in each database. */
  cleanupSessions: number;
  /** Verification walks every chain; 0 skips it (it is the slowest measure at 50M events). */
  verify: boolean;
  /**
   * Closed months rewritten in chain order (as the partitions job does an hour after a month
   * ends) before the pages are measured; BENCH_AUDIT_ORDER=0 measures them in time order.
   */
  order: boolean;
  /** Months the events are spread over (one partition each). */
  months: number;
  /** BENCH_AUDIT_KEEP=1: the large database is kept (its URL and secrets printed) for further measures. */
  keep: boolean;
  /**
   * BENCH_AUDIT_REUSE (a kept database's URL) and BENCH_AUDIT_REUSE_SECRETS (its
   * `AUDIT_HMAC_KEY,KEY_ENCRYPTION_KEY`): measure that database again instead of seeding one.
   * The measures write to it (the cleanup's sessions and events) and drop its oldest month.
   */
  reuse?: { url: string; secrets: RunSecrets };
}

/** The secrets a seeded database is bound to: its events' HMAC key and its signing keys' sealing key. */
export interface RunSecrets {
  AUDIT_HMAC_KEY: string;
  KEY_ENCRYPTION_KEY: string;
}

function reuseOf(): AuditBenchConfig['reuse'] {
  const url = process.env.BENCH_AUDIT_REUSE;
  if (!url) return undefined;
  const [auditKey, keyEncryptionKey] = (process.env.BENCH_AUDIT_REUSE_SECRETS ?? '').split(',');
  if (!auditKey || !keyEncryptionKey)
    throw new Error('BENCH_AUDIT_REUSE needs BENCH_AUDIT_REUSE_SECRETS=<AUDIT_HMAC_KEY>,<KEY_ENCRYPTION_KEY> (printed when it was kept)');
  return { url, secrets: { AUDIT_HMAC_KEY: auditKey, KEY_ENCRYPTION_KEY: keyEncryptionKey } };
}

export function readConfig(argv: string[]): AuditBenchConfig {
  const small = argv.includes('--small') || process.env.BENCH_AUDIT_SIZE === 'small';
  const base = small ? SMALL_SIZE : DEFAULT_SIZE;
  const size = {
    users: positive('BENCH_AUDIT_USERS', base.users),
    sessions: positive('BENCH_AUDIT_SESSIONS', base.sessions),
    events: positive('BENCH_AUDIT_EVENTS', base.events),
  };
  const named = size.users === base.users && size.sessions === base.sessions && size.events === base.events;
  return {
    size,
    sizeName: named ? (small ? 'small' : 'default') : 'custom',
    runs: positive('BENCH_AUDIT_RUNS', 100),
    cleanupSessions: positive('BENCH_AUDIT_CLEANUP', small ? 20_000 : 100_000),
    verify: process.env.BENCH_AUDIT_VERIFY !== '0',
    order: process.env.BENCH_AUDIT_ORDER !== '0',
    months: 12,
    keep: process.env.BENCH_AUDIT_KEEP === '1',
    reuse: reuseOf(),
  };
}
