import { availableParallelism } from 'node:os';
import { plainToInstance, Transform } from 'class-transformer';
import { IsBoolean, IsEnum, IsIn, IsInt, IsOptional, IsString, Matches, Max, Min, validateSync, ValidationError } from 'class-validator';
import { CronTime } from 'cron';
import { isIP } from 'node:net';
import { validateHeaderValue } from 'node:http';
import { SIGNING_ALGORITHMS, type SigningAlgorithm } from '../keys/signing-algorithm';
import { ConfigurationError } from './configuration-error';

export enum NodeEnv {
  Development = 'development',
  Production = 'production',
  Test = 'test',
}

/**
 * The largest value of a setting that reaches clients as an integer (a token's `expiresIn`, the
 * X-RateLimit-* and Retry-After headers): the OpenAPI document promises them as int32.
 */
export const INT32_MAX = 2_147_483_647;

/** The greatest BCRYPT_COST accepted: a hash then takes 2–3 s on a server core (at 12, a third of a second). */
export const MAX_BCRYPT_COST = 15;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'log', 'debug', 'verbose'] as const;
export type LogLevelName = (typeof LOG_LEVELS)[number];
const ACCESS_LOG_PROBES = ['failures', 'all'] as const;
export type AccessLogProbes = (typeof ACCESS_LOG_PROBES)[number];

const toBoolean = ({ value }: { value: unknown }) => {
  if (typeof value !== 'string') return value;
  const v = value.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(v)) return true;
  if (['false', '0', 'no', 'off'].includes(v)) return false;
  return value;
};
// Whole decimal numbers only: Number('') is 0 (a blank variable must be an error, not a silent
// zero), and Number() also reads '0x10', '1e3' and '0b1', which no one writes meaning a count.
const toNumber = ({ value }: { value: unknown }) => (typeof value === 'string' ? (/^\s*-?\d+\s*$/.test(value) ? Number(value) : NaN) : value);
const toOptionalNumber = ({ value }: { value: unknown }) => (typeof value === 'string' && value.trim() === '' ? undefined : toNumber({ value }));
const toOptionalBoolean = ({ value }: { value: unknown }) => (typeof value === 'string' && value.trim() === '' ? undefined : toBoolean({ value }));
const toOptionalString = ({ value }: { value: unknown }) => (typeof value === 'string' && value.trim() === '' ? undefined : value);

/**
 * Every environment variable the service reads, with its default.
 * Validated once at boot (ConfigModule `validate`, the CLI, the TypeORM data source).
 */
export class Env {
  @IsEnum(NodeEnv)
  NODE_ENV: NodeEnv = NodeEnv.Development;

  @Transform(toNumber)
  @IsInt()
  // 0 is "any free port" (tests, a host's own harness); the start's log line says which.
  @Min(0)
  @Max(65535)
  PORT = 3000;

  /**
   * Where the API's routes live (API.md's paths are under it): `api/v1` gives
   * `/api/v1/auth/login`. Health, metrics and docs stay at the root.
   */
  @Matches(/^[A-Za-z0-9._~-]+(\/[A-Za-z0-9._~-]+)*$/, {
    message: 'ROUTE_PREFIX must be path segments without leading or trailing slashes, e.g. api/v1',
  })
  ROUTE_PREFIX = 'api/v1';

  @IsString()
  HOST = '0.0.0.0';

  /**
   * Seconds a graceful shutdown may take once a signal arrives (the standalone service; a host
   * app's shutdown is the host's): past them the process says it did not finish and exits with
   * 1. 0: no deadline. Within an orchestrator's grace period (Kubernetes: 30 s), so the log
   * says why rather than a SIGKILL saying nothing.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(0)
  @Max(3600)
  SHUTDOWN_TIMEOUT = 25;

  /** Unset: an embedded PostgreSQL is started with its data under DATA_DIR/pg. */
  @Transform(toOptionalString)
  @IsOptional()
  @Matches(/^postgres(ql)?:\/\//, { message: 'DATABASE_URL must be a postgres:// URL' })
  DATABASE_URL?: string;

  /**
   * The URL of the listening connections (two per instance: LISTEN/NOTIFY keeps the session
   * cache and the signing-key ring exact). Unset: DATABASE_URL. Set it past any pooler between
   * the service and PostgreSQL (DATABASE_URL itself must not be a transaction-pooling one: the
   * jobs' advisory locks are session-level).
   */
  @Transform(toOptionalString)
  @IsOptional()
  @Matches(/^postgres(ql)?:\/\//, { message: 'DATABASE_LISTEN_URL must be a postgres:// URL' })
  DATABASE_LISTEN_URL?: string;

  /**
   * Connections in each instance's pool (requests and jobs). Beside them an instance opens its
   * two listening connections and, while an admin verification runs, up to
   * AUDIT_VERIFY_WORKERS more: the database's max_connections must cover every instance's sum,
   * plus one more instance during a rolling upgrade.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(10)
  @Max(1000)
  DATABASE_POOL_MAX = 20;

  /**
   * Seconds after which a pooled connection is closed (once idle) and the next one opened in its
   * place; 0: kept until it breaks. After a failover that leaves the old primary up as a standby,
   * connections kept forever would stay on it, read-only, until the instance restarts.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(0)
  @Max(86_400)
  DATABASE_CONNECTION_LIFETIME = 600;

  /** Development secrets and the embedded database live here. */
  @IsString()
  // A blank one resolves to the working directory (secrets.json beside the code, pg/ in it).
  @Matches(/\S/, { message: 'DATA_DIR must not be empty: a blank one would be the working directory' })
  DATA_DIR = '.data';

  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  JWT_SECRET?: string;

  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  PASSWORD_PEPPER?: string;

  /**
   * Encrypts the private parts of the signing keys stored in the database (AES-256-GCM);
   * resolved like JWT_SECRET. Changing it makes the stored keys unreadable.
   */
  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  KEY_ENCRYPTION_KEY?: string;

  /** The key of the audit log's hash chain and checkpoints (HMAC-SHA-256); resolved like JWT_SECRET. */
  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  AUDIT_HMAC_KEY?: string;

  /**
   * Refuse to start when AUDIT_HMAC_KEY does not verify the log's oldest checkpoint (0.23.0).
   * false only to start with a new key on purpose (the old one leaked: every earlier event then
   * reads as altered), or to run `audit-verify` on a log whose first checkpoint was altered.
   */
  @Transform(toBoolean)
  @IsBoolean()
  AUDIT_HMAC_KEY_CHECK = true;

  /** Audit events after which a checkpoint of the chain heads is written (or earlier, see AUDIT_CHECKPOINT_INTERVAL). */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  AUDIT_CHECKPOINT_EVERY = 1000;

  /**
   * Seconds after which a checkpoint is written if any event was recorded since the last one. At
   * most a day: its half is a timer's period, and Node runs a timer past 2^31 - 1 ms every 1 ms.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(86_400)
  AUDIT_CHECKPOINT_INTERVAL = 300;

  /**
   * Audit exports one instance streams at once. Each holds a pooled connection and a snapshot
   * for as long as its client reads; beyond this, an export is refused with a 429.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(10)
  AUDIT_EXPORT_MAX_CONCURRENT = 2;

  /**
   * Worker threads the audit verification runs its passes on, each with its own connection in
   * one shared snapshot; 0 runs them on the request's own connection and thread.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(0)
  @Max(16)
  AUDIT_VERIFY_WORKERS = Math.min(4, availableParallelism());

  /**
   * Chains one verification pass holds in memory (about 350 bytes each, 180 MB for 500k): a log with more chains
   * than workers times this takes more passes, each one more scan of the events.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(1000)
  // 3.5 GB of memory a worker at the most.
  @Max(10_000_000)
  AUDIT_VERIFY_CHAINS_PER_PASS = 500_000;

  /** When set, each checkpoint this instance writes is also appended to this file as one NDJSON line. */
  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  AUDIT_CHECKPOINT_FILE?: string;

  /**
   * Days audit events are kept. Unset: all of them. When set, an hourly job (one instance at a
   * time, under an advisory lock) drops each month's partition once all of its events are older
   * than this and every shipping destination has them (archived first when AUDIT_ARCHIVE_DIR is
   * set); a month is dropped whole, so events live up to a month longer.
   */
  @Transform(toOptionalNumber)
  @IsOptional()
  @IsInt()
  @Min(1)
  // A hundred years. Far beyond it, the cutoff is no date at all and every comparison with it
  // false: each closed month would look expired (a value meant as "keep forever" drops them all).
  @Max(36_500)
  AUDIT_RETENTION_DAYS?: number;

  /**
   * Rewrites each closed month of audit_events with its events in chain order (a user's events
   * of the month together), an hour after the month ends, by the hourly partitions job: a
   * user's audit page then reads a page or two of each month instead of a page per event.
   * Each rewrite copies the month once (its size again on disk and in WAL, for minutes).
   */
  @Transform(toBoolean)
  @IsBoolean()
  AUDIT_ORDER_CLOSED_MONTHS = true;

  /** When set, each month's events are written there as NDJSON, with the chain's bases, before the month is dropped. */
  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  AUDIT_ARCHIVE_DIR?: string;

  /**
   * A directory into which the service ships the audit log in pieces, as it is written: every
   * AUDIT_SHIP_INTERVAL seconds, the events after the last piece's, as an export after a seq
   * (`audit-export --after-seq`), in a file of its own. Unset: nothing is shipped.
   */
  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  AUDIT_SHIP_DIR?: string;

  /**
   * An HTTP(S) endpoint to which the service ships the audit log in pieces, as it is written:
   * each piece POSTed as NDJSON, the next one sent once the endpoint answered 2xx (where it
   * stands is kept in audit_ship_progress). https:// in production, but to a loopback address
   * (a log agent beside the service). Unset: nothing is sent. Credentials go in
   * AUDIT_SHIP_AUTHORIZATION, not in the URL.
   */
  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  AUDIT_SHIP_URL?: string;

  /** The Authorization header sent with every piece to AUDIT_SHIP_URL (e.g. `Bearer <token>`): a secret, never logged. */
  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  AUDIT_SHIP_AUTHORIZATION?: string;

  /** Seconds between two shipping ticks (a piece is shipped only when there are new events). */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(86_400)
  AUDIT_SHIP_INTERVAL = 60;

  /**
   * Events a shipped piece holds at most: a larger backlog goes as several pieces, one after the
   * other, in the same tick. 5,000 events are 2–3 MB, within the request limits of common log
   * receivers (Fluentd's in_http takes 32 MB, Fluent Bit's http input 4 MB by default).
   */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(10_000_000)
  AUDIT_SHIP_MAX_EVENTS = 5_000;

  /** The tokens' `iss`, checked on every request (jsonwebtoken skips an empty one: refused). */
  @IsString()
  @Matches(/\S/, { message: 'JWT_ISSUER must not be empty' })
  JWT_ISSUER = 'sessionary';

  /** The tokens' `aud`, checked on every request (as JWT_ISSUER). */
  @IsString()
  @Matches(/\S/, { message: 'JWT_AUDIENCE must not be empty' })
  JWT_AUDIENCE = 'sessionary-api';

  /**
   * The algorithm of new signing keys: ES256 (public keys published at /.well-known/jwks.json)
   * or HS256 (a secret only this service holds; nothing is published). A change takes effect
   * at the next rotation.
   */
  @IsIn(SIGNING_ALGORITHMS)
  SIGNING_ALGORITHM: SigningAlgorithm = 'ES256';

  /** Days after which a scheduled job rotates the signing key. Unset: only `npm run cli -- keys rotate` does. */
  @Transform(toOptionalNumber)
  @IsOptional()
  @IsInt()
  @Min(1)
  @Max(3650)
  SIGNING_KEY_ROTATION_DAYS?: number;

  /** Seconds an access token is valid. */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  ACCESS_TOKEN_TTL = 900;

  /** Seconds of inactivity after which a session ends. */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  SESSION_IDLE_TTL = 3600;

  /** Seconds after login after which a session ends whatever its activity. */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  SESSION_ABSOLUTE_TTL = 86400;

  /**
   * Seconds between writes of batched activity (last seen, idle extension). Unset: 60 or a
   * tenth of SESSION_IDLE_TTL, whichever is smaller.
   */
  @Transform(toOptionalNumber)
  @IsOptional()
  @IsInt()
  @Min(1)
  // A timer's period (see AUDIT_CHECKPOINT_INTERVAL).
  @Max(86_400)
  SESSION_TOUCH_INTERVAL?: number;

  /**
   * Sessions held by each instance's session cache (LRU); 0 turns the cache off. Each of its two
   * LRUs sets aside about 16 bytes per entry of this at start (160 MB each at the maximum).
   */
  @Transform(toNumber)
  @IsInt()
  @Min(0)
  @Max(10_000_000)
  SESSION_CACHE_MAX = 100_000;

  /** Seconds a cached session is trusted at most before it is read again (a safety net). */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  SESSION_CACHE_TTL = 300;

  /** Seconds a refresh token is valid; never beyond the session's absolute deadline. */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  REFRESH_TOKEN_TTL = 86400;

  /**
   * Seconds an authentication stays recent enough for a sensitive action (RFC 9470's max_age):
   * ending all other sessions, an admin's revocation, an email change without the current
   * password. Older: 401 with `insufficient_user_authentication`; POST /auth/reauthenticate
   * makes it recent again.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  REAUTH_MAX_AGE = 300;

  /** Seconds an ended session is kept (for the user's and the admin's history) before cleanup deletes it. */
  @Transform(toNumber)
  @IsInt()
  @Min(0)
  @Max(INT32_MAX)
  SESSION_RETENTION = 30 * 86400;

  /** Active sessions a user may have; a login beyond it ends the least recently used. 0: unlimited. */
  @Transform(toNumber)
  @IsInt()
  @Min(0)
  @Max(INT32_MAX)
  SESSION_MAX_PER_USER = 10;

  @Transform(toNumber)
  @IsInt()
  /**
   * bcrypt's cost factor: 4–15; at least 10 in production (OWASP's floor; 4 is for tests). Each
   * step doubles the work of every login (and of every unknown account's): bcrypt takes up to
   * 31, but past 15 a hash takes seconds, and a typo (31 for 13) minutes to days.
   */
  @Min(4)
  @Max(MAX_BCRYPT_COST, { message: `BCRYPT_COST must not be greater than ${MAX_BCRYPT_COST}: each step doubles the time of every login` })
  BCRYPT_COST = 12;

  /** Failed logins per identifier (existing or not) within LOGIN_FAILURE_WINDOW before back-off. */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  LOGIN_MAX_FAILURES_PER_IDENTIFIER = 5;

  /** Failed logins per client IP within LOGIN_FAILURE_WINDOW before back-off. */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  LOGIN_MAX_FAILURES_PER_IP = 100;

  /** Seconds without a failure after which a counter starts again from zero. */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  LOGIN_FAILURE_WINDOW = 900;

  /** Seconds of the first back-off; each further failure doubles it, up to LOGIN_FAILURE_WINDOW. */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  LOGIN_BACKOFF_BASE = 30;

  /**
   * Registrations per client IP (IPv6 per /64) within REGISTER_WINDOW; beyond it, 429 until the
   * window ends. Each costs a bcrypt hash. 0 turns the limit off.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(0)
  @Max(INT32_MAX)
  REGISTER_MAX_PER_IP = 30;

  /**
   * Registrations from all clients together within REGISTER_WINDOW; beyond it, 429 for everyone
   * until the window ends, and a warning in the log (the operator's alarm). Counts only what the
   * per-IP limit let through, so one client cannot spend it. 0 (the default) turns it off.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(0)
  @Max(INT32_MAX)
  REGISTER_MAX_TOTAL = 0;

  /** Seconds of the registration limit's window, from an IP's first registration in it. */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(INT32_MAX)
  REGISTER_WINDOW = 600;

  /** Requests per client IP per minute over all routes; 0 turns the limit off. */
  @Transform(toNumber)
  @IsInt()
  @Min(0)
  @Max(INT32_MAX)
  RATE_LIMIT_PER_MINUTE = 600;

  /**
   * Milliseconds between two syncs of the in-memory request counts with PostgreSQL (one
   * statement for every client IP seen since the last one). Shorter: a tighter limit across
   * instances; longer: fewer writes.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(100)
  @Max(60_000)
  RATE_LIMIT_SYNC_INTERVAL = 1000;

  /**
   * Seconds within which one session records at most one REFRESH_FAILED, and one ACCESS_DENIED
   * per route: refusals a caller can provoke at will cannot flood the audit log.
   */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(86_400)
  AUDIT_REFUSAL_WINDOW = 60;

  /**
   * Seconds between two summaries of the refusals that name no account or session (refused
   * bearer tokens, unknown refresh tokens, 400, 413, 415, 429): REQUESTS_REFUSED events per
   * client IP, at most 101 an interval and instance (RefusedRequestsTally).
   */
  @Transform(toNumber)
  @IsInt()
  @Min(1)
  @Max(86_400)
  AUDIT_REFUSAL_SUMMARY_INTERVAL = 60;

  /** Comma-separated origins allowed by CORS; empty: no cross-origin access. */
  @IsString()
  CORS_ORIGINS = '';

  @IsString()
  SESSION_CLEANUP_CRON = '*/5 * * * *';

  @Transform(toBoolean)
  @IsBoolean()
  MIGRATIONS_RUN = true;

  /** Swagger UI at /docs and the document at /docs-json. Unset: on, except in production. */
  @Transform(toOptionalBoolean)
  @IsOptional()
  @IsBoolean()
  DOCS_ENABLED?: boolean;

  /** Prometheus metrics at /metrics. */
  @Transform(toBoolean)
  @IsBoolean()
  METRICS_ENABLED = true;

  /**
   * When set, /metrics answers only `Authorization: Bearer <METRICS_TOKEN>` (401 otherwise). A
   * secret: never logged; in production at least 32 bytes, not a well-known value, and not one
   * of the other secrets. Unset: /metrics is open (protect it at the proxy).
   */
  @Transform(toOptionalString)
  @IsOptional()
  @IsString()
  // What a bearer credential can carry (no spaces, printable ASCII): another one could never be sent.
  @Matches(/^[\x21-\x7e]+$/, { message: 'METRICS_TOKEN must be printable ASCII without spaces' })
  METRICS_TOKEN?: string;

  /**
   * Fastify's trustProxy: `false` (default), `true`, a hop count, or a comma-separated
   * list of proxy addresses/CIDRs. Only then is X-Forwarded-For used for the client IP.
   */
  @IsString()
  TRUST_PROXY = 'false';

  @IsIn(LOG_LEVELS)
  LOG_LEVEL: LogLevelName = 'log';

  /** `json`: one JSON object a line (default); `text`: Nest's readable lines. */
  @IsIn(['json', 'text'])
  LOG_FORMAT: 'json' | 'text' = 'json';

  /**
   * Access lines of probes and scrapes (`/health/live`, `/health/ready`, `/metrics`):
   * `failures` (default) logs only those answered with a status of 400 or more, `all` every one.
   */
  @IsIn(ACCESS_LOG_PROBES)
  ACCESS_LOG_PROBES: AccessLogProbes = 'failures';
}

/** Connections of the pool left for the jobs and requests beside the exports (DATABASE_POOL_MAX's cross-check). */
const POOL_FOR_JOBS_AND_REQUESTS = 10;

/** The least bcrypt cost production accepts: OWASP's Password Storage Cheat Sheet's minimum. */
export const MIN_PRODUCTION_BCRYPT_COST = 10;

/** Numbers that must relate to each other; class-validator checks one field at a time. */
function crossFieldErrors(env: Env): string[] {
  const errors: string[] = [];
  if (env.NODE_ENV === NodeEnv.Production && env.BCRYPT_COST < MIN_PRODUCTION_BCRYPT_COST) {
    errors.push(`BCRYPT_COST must be at least ${MIN_PRODUCTION_BCRYPT_COST} in production`);
  }
  if (env.DATABASE_POOL_MAX < env.AUDIT_EXPORT_MAX_CONCURRENT + POOL_FOR_JOBS_AND_REQUESTS) {
    // Each export holds a connection as long as its client reads; the jobs hold up to about 8 at
    // once (the cleanup 3, shipping 2, partitions, checkpoints, key rotation 1 each).
    errors.push(
      `DATABASE_POOL_MAX (${env.DATABASE_POOL_MAX}) must leave ${POOL_FOR_JOBS_AND_REQUESTS} connections for the jobs and requests beside AUDIT_EXPORT_MAX_CONCURRENT (${env.AUDIT_EXPORT_MAX_CONCURRENT}) exports: at least ${env.AUDIT_EXPORT_MAX_CONCURRENT + POOL_FOR_JOBS_AND_REQUESTS}`,
    );
  }
  if (env.AUDIT_ARCHIVE_DIR !== undefined && env.AUDIT_RETENTION_DAYS === undefined) {
    // Only retention archives (a month, before dropping it): set alone, nothing is ever archived.
    errors.push('AUDIT_ARCHIVE_DIR is set without AUDIT_RETENTION_DAYS: nothing would be archived');
  }
  if (env.LOGIN_BACKOFF_BASE > env.LOGIN_FAILURE_WINDOW) {
    // The back-off is capped at the window: a longer first one would silently be the window.
    errors.push('LOGIN_BACKOFF_BASE must not exceed LOGIN_FAILURE_WINDOW');
  }
  if (env.SESSION_IDLE_TTL > env.SESSION_ABSOLUTE_TTL) {
    errors.push('SESSION_IDLE_TTL must not exceed SESSION_ABSOLUTE_TTL');
  }
  if (env.SESSION_TOUCH_INTERVAL !== undefined && env.SESSION_TOUCH_INTERVAL * 2 > env.SESSION_IDLE_TTL) {
    // Activity must reach the database well before the idle deadline it extends.
    errors.push('SESSION_TOUCH_INTERVAL must be at most half of SESSION_IDLE_TTL');
  }
  try {
    new CronTime(env.SESSION_CLEANUP_CRON);
  } catch {
    errors.push('SESSION_CLEANUP_CRON must be a valid cron expression');
  }
  if (parseCorsOrigins(env.CORS_ORIGINS).some((o) => !CORS_ORIGIN_PATTERN.test(o))) {
    errors.push('CORS_ORIGINS must be a comma-separated list of origins like https://app.example.com');
  }
  if (!parseTrustProxy(env.TRUST_PROXY).valid) {
    errors.push('TRUST_PROXY must be true, false, a hop count or a list of addresses');
  }
  errors.push(...auditShipUrlErrors(env));
  return errors;
}

/** What is wrong with AUDIT_SHIP_URL and its header (never quoting either: the URL may hold a token in its query). */
function auditShipUrlErrors(env: Env): string[] {
  if (env.AUDIT_SHIP_URL === undefined) {
    return env.AUDIT_SHIP_AUTHORIZATION === undefined ? [] : ['AUDIT_SHIP_AUTHORIZATION is set without AUDIT_SHIP_URL'];
  }
  let url: URL;
  try {
    url = new URL(env.AUDIT_SHIP_URL);
  } catch {
    return ['AUDIT_SHIP_URL must be an http:// or https:// URL'];
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return ['AUDIT_SHIP_URL must be an http:// or https:// URL'];
  // Node refuses such a header when the request is made, at every tick: said once, at start.
  if (env.AUDIT_SHIP_AUTHORIZATION !== undefined && !isHeaderValue(env.AUDIT_SHIP_AUTHORIZATION)) {
    return ['AUDIT_SHIP_AUTHORIZATION must be one line of printable characters (a secret read from a file may end in a line break)'];
  }
  if (url.username || url.password) return ['AUDIT_SHIP_URL must not carry credentials: put them in AUDIT_SHIP_AUTHORIZATION'];
  if (env.NODE_ENV === NodeEnv.Production && url.protocol === 'http:' && !isLoopbackHost(url.hostname)) {
    // The log leaves the host in clear text only to an agent on the same host.
    return ['AUDIT_SHIP_URL must be https:// in production, unless it is a loopback address'];
  }
  return [];
}

function isHeaderValue(value: string): boolean {
  try {
    validateHeaderValue('Authorization', value);
    return true;
  } catch {
    return false;
  }
}

function isLoopbackHost(hostname: string): boolean {
  const host = hostname.replace(/^\[(.*)\]$/, '$1');
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

/** One origin of CORS_ORIGINS; what Access-Control-Allow-Origin can then carry. */
export const CORS_ORIGIN_PATTERN = /^https?:\/\/[^/\s,]+$/;

export function parseCorsOrigins(raw: string): string[] {
  return raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

export type TrustProxy = boolean | string[] | ((address: string, hop: number) => boolean);

/** TRUST_PROXY as Fastify takes it, and `hops` when it is a hop count (1 or more). */
export function parseTrustProxy(raw: string): { valid: boolean; value: TrustProxy; hops?: number } {
  const v = raw.trim().toLowerCase();
  if (v === '' || v === 'false' || v === '0') return { valid: true, value: false };
  if (v === 'true') return { valid: true, value: true };
  if (/^\d+$/.test(v)) {
    const hops = Number(v);
    // Trust exactly that many proxies in front of us, counted from our side.
    return { valid: true, value: (_address: string, hop: number) => hop < hops, hops };
  }
  const list = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return { valid: list.length > 0 && list.every(isProxyAddress), value: list };
}

/** An IP, an IP/prefix, or one of proxy-addr's named ranges. */
function isProxyAddress(entry: string): boolean {
  if (['loopback', 'linklocal', 'uniquelocal'].includes(entry)) return true;
  const [address, prefix, ...rest] = entry.split('/');
  const version = isIP(address);
  if (!version || rest.length) return false;
  return prefix === undefined || (/^\d{1,3}$/.test(prefix) && Number(prefix) <= (version === 4 ? 32 : 128));
}

/**
 * Every variable the service reads: Env's fields, the optional ones included (with ES2022 class
 * fields, a declared field exists on an instance even without an initializer).
 */
export const ENV_VARIABLES: readonly string[] = Object.keys(new Env());

/**
 * Validates raw variables into a typed Env. The error names the bad variables, never their
 * values (a value may be a secret).
 */
export function parseEnv(raw: Record<string, unknown>): Env {
  // Only our own variables: the rest of the process environment is none of our business.
  const picked = Object.fromEntries(ENV_VARIABLES.filter((k) => raw[k] !== undefined).map((k) => [k, raw[k]]));
  const env = plainToInstance(Env, picked, { exposeDefaultValues: true });
  const errors = validateSync(env, { skipMissingProperties: false, whitelist: false });
  const unique = errors.map(invalidVariable);
  const all = [...unique, ...(unique.length ? [] : crossFieldErrors(env))];
  if (all.length) {
    throw new ConfigurationError(`Invalid configuration: ${all.join('; ')}`);
  }
  return env;
}

/**
 * "X is invalid (must be …)": what the variable must be, from its constraints, whose messages
 * name the variable and the rule but never the value.
 */
function invalidVariable(error: ValidationError): string {
  const constraints = error.constraints ?? {};
  // Not a number at all: its bounds say nothing more (NaN fails every one of them).
  const broken = constraints.isInt ? [constraints.isInt] : Object.values(constraints);
  const rules = broken.map((m) => m.replace(new RegExp(`^${error.property} `), ''));
  return `${error.property} is invalid${rules.length ? ` (${rules.join('; ')})` : ''}`;
}

/** DOCS_ENABLED, or its default: the docs are served everywhere but in production. */
export function docsEnabled(env: Pick<Env, 'DOCS_ENABLED' | 'NODE_ENV'>): boolean {
  return env.DOCS_ENABLED ?? env.NODE_ENV !== NodeEnv.Production;
}
