import { QueryFailedError, QueryRunnerAlreadyReleasedError, QueryRunnerProviderAlreadyReleasedError } from 'typeorm';

export const PG_UNIQUE_VIOLATION = '23505';
/** lock_timeout ran out. */
export const PG_LOCK_NOT_AVAILABLE = '55P03';

/** The SQLSTATE of a failed query, without exposing the driver error itself. */
export function pgErrorCode(error: unknown): string | undefined {
  if (!(error instanceof QueryFailedError)) return undefined;
  const code = (error.driverError as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * SQLSTATEs that mean "the server cannot serve us now", not "this statement is wrong":
 * class 08 (connection exception), 57P01-57P03 (admin/crash shutdown, cannot connect now:
 * starting up or shutting down), 53300 (too many connections) and 25006 (a write refused
 * because the server is read-only: a standby after a failover kept the connections, or
 * `default_transaction_read_only` during maintenance; until 0.21.0 every write answered 500
 * with a stack trace in the log, and readiness said 200).
 */
const UNAVAILABLE_SQLSTATES = new Set(['08000', '08001', '08003', '08004', '08006', '57P01', '57P02', '57P03', '53300', '25006']);

/** Socket errors of a server that is down, restarting or unreachable. */
const UNAVAILABLE_ERRNOS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

/**
 * Messages of plain Errors that pg and pg-pool raise without a code (pg/lib/client.js,
 * pg-pool/index.js): a connection lost or never made. "Connection terminated" also covers
 * "... unexpectedly" and pg-pool's "... due to connection timeout".
 */
const UNAVAILABLE_MESSAGES = [
  /^Connection terminated\b/,
  /^timeout exceeded when trying to connect$/,
  /^Client has encountered a connection error and is not queryable$/,
  // A plain pg Client's own connectionTimeoutMillis (e.g. a dedicated LISTEN connection).
  /^timeout expired$/,
];

/**
 * SQLSTATEs of a statement the server could not finish now, though nothing is wrong with it
 * and the server is up: 57014 (canceled: statement_timeout ran out, an I/O stall or lock waits
 * behind it), 40P01 (deadlock: PostgreSQL chose this transaction to abort), 40001 (a
 * serialization failure), 55P03 (lock_timeout ran out), 53100 (disk full), 53200 (out of
 * memory) and 53400 (a configuration limit, such as max_locks_per_transaction). Until 0.24.1
 * each was a 500, with a stack per request and no Retry-After, while readiness said 200.
 */
const BUSY_SQLSTATES = new Set(['57014', '40P01', '40001', '55P03', '53100', '53200', '53400']);

/**
 * The SQLSTATE when `error` is a statement the server could not finish now (BUSY_SQLSTATES):
 * the right answer is 503 with Retry-After, the same request later may well succeed. Not an
 * outage (isDatabaseUnavailable): the server answers.
 */
export function databaseBusyCode(error: unknown): string | undefined {
  const code = pgErrorCode(error);
  return code !== undefined && BUSY_SQLSTATES.has(code) ? code : undefined;
}

// Causes nest a few levels at most (QueryFailedError > pg-pool timeout > socket error).
const MAX_DEPTH = 4;

/**
 * True when `error` says the database is unreachable or refusing connections for now (so the
 * right answer is 503 with Retry-After), whether pg raised it alone (pool checkout, connect)
 * or TypeORM wrapped it in a QueryFailedError (the connection died under a query).
 * A failing statement (constraint, syntax, statement_timeout) is not unavailability.
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  return unavailable(error, 0);
}

function unavailable(error: unknown, depth: number): boolean {
  if (depth > MAX_DEPTH || typeof error !== 'object' || error === null) return false;
  if (error instanceof QueryFailedError) return unavailable(error.driverError, depth + 1);
  // TypeORM releases a query runner as soon as its connection emits 'error'
  // (PostgresQueryRunner.connect), so the next statement of a transaction whose connection
  // the server closed fails with this instead of the connection error. (A runner used after
  // our own release() would be matched too; that would be a bug that every test shows.)
  // EntityManager.query on such a transaction's manager says the same in other words.
  if (error instanceof QueryRunnerAlreadyReleasedError || error instanceof QueryRunnerProviderAlreadyReleasedError) return true;
  const { code, message, cause, errors } = error as { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown };
  if (typeof code === 'string' && (UNAVAILABLE_SQLSTATES.has(code) || UNAVAILABLE_ERRNOS.has(code))) return true;
  if (error instanceof Error && typeof message === 'string' && UNAVAILABLE_MESSAGES.some((pattern) => pattern.test(message))) return true;
  // Node's happy-eyeballs connect (a host name with several addresses) fails with an AggregateError.
  if (Array.isArray(errors) && errors.some((inner) => unavailable(inner, depth + 1))) return true;
  return unavailable(cause, depth + 1);
}
