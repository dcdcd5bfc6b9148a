/**
 * One line for the failed first connections to PostgreSQL that an operator fixes in DATABASE_URL
 * or on the server (a database or user that does not exist, a wrong password, a host that does
 * not resolve, nothing listening, no answer), instead of the driver's stack. Never a password:
 * the server's own message (which names the database or user) and the host and port.
 * Imports nothing: describeFatal loads it, and the CLI loads that before any package.
 */

/** Where a connection went: what a message may name of DATABASE_URL (never its password). */
export interface ConnectTarget {
  host: string;
  port: string;
}

/** A first connection that failed for one of the reasons describeConnectFailure knows; its message is that line. */
export class DatabaseConnectError extends Error {
  override name = 'DatabaseConnectError';
}

/** The host and port a postgres:// URL names (pg's defaults: localhost, 5432; `?host=` a socket folder too). */
export function connectTargetOf(url: string): ConnectTarget | undefined {
  try {
    const parsed = new URL(url);
    const host = parsed.searchParams.get('host') ?? decodeURIComponent(parsed.hostname);
    return { host: host || 'localhost', port: parsed.port || parsed.searchParams.get('port') || '5432' };
  } catch {
    return undefined;
  }
}

interface Found {
  code: string;
  message: string;
  address?: string;
  port?: unknown;
  hostname?: string;
}

const REFUSED_BY_SERVER: Record<string, string> = {
  '3D000': 'create that database, or correct its name in DATABASE_URL (the path after the port)',
  '28P01':
    'check the user name and password in DATABASE_URL (in a URL, a password\'s "@", ":", "/", "?" or "#" must be percent-encoded: %40, %3A, %2F, %3F, %23)',
  '28000':
    "check the user name in DATABASE_URL, and that the server's pg_hba.conf admits this host, user and database (sslmode=require if it admits SSL only)",
};

const UNREACHABLE: Record<string, string> = {
  ECONNREFUSED:
    'nothing listens there: check the host and port in DATABASE_URL, and that PostgreSQL runs and listens on that address (listen_addresses)',
  ENOTFOUND: 'the host name does not resolve: check the host in DATABASE_URL',
  EAI_AGAIN: 'the host name could not be resolved (DNS did not answer): check the host in DATABASE_URL and the DNS',
  ETIMEDOUT: 'no answer: check the host and port in DATABASE_URL, and that no firewall drops the connection',
  EHOSTUNREACH: 'no route to the host: check the host in DATABASE_URL and the network',
  ENETUNREACH: 'no route to the host: check the host in DATABASE_URL and the network',
};

// What pg (a client's connectionTimeoutMillis) and pg-pool say of a connection that never answered.
const TIMEOUT_MESSAGES = [/^Connection terminated due to connection timeout$/, /^timeout exceeded when trying to connect$/, /^timeout expired$/];

// Causes nest a few levels at most (a wrapper > pg-pool's error > the socket's AggregateError > each address's).
const MAX_DEPTH = 4;

/**
 * The line for `error` when it is one of those failures, found in it or its causes; undefined
 * otherwise. `target`: where it connected, as DATABASE_URL names it (a server's refusal says
 * nothing of where); without it, the address a socket's error gives, if any.
 */
export function describeConnectFailure(error: unknown, target?: ConnectTarget): string | undefined {
  const found = find(error, 0);
  if (!found) return undefined;
  const where = placeOf(found, target);
  const refused = REFUSED_BY_SERVER[found.code];
  if (refused)
    return `PostgreSQL${where ? ` at ${where}` : ''} refused the connection: ${oneLine(found.message)} (SQLSTATE ${found.code}); ${refused}`;
  const code = found.code === 'timeout' ? 'timed out' : found.code;
  return `Cannot connect to PostgreSQL${where ? ` at ${where}` : ''} (${code}): ${UNREACHABLE[found.code] ?? UNREACHABLE.ETIMEDOUT}`;
}

/** The code (a SQLSTATE, an errno, or `timeout`) of the failure describeConnectFailure would describe. */
export function connectFailureCode(error: unknown): string | undefined {
  return find(error, 0)?.code;
}

function find(error: unknown, depth: number): Found | undefined {
  if (depth > MAX_DEPTH || typeof error !== 'object' || error === null) return undefined;
  const { code, message, address, port, hostname, cause, errors, driverError } = error as Record<string, unknown>;
  const text = typeof message === 'string' ? message : '';
  // Node's happy-eyeballs connect (a name with several addresses) fails with an AggregateError,
  // whose own code names no address: each of its errors does.
  if (Array.isArray(errors)) {
    for (const inner of errors) {
      const found = find(inner, depth + 1);
      if (found) return found;
    }
  }
  if (typeof code === 'string' && (Object.hasOwn(REFUSED_BY_SERVER, code) || Object.hasOwn(UNREACHABLE, code))) {
    return {
      code,
      message: text,
      address: typeof address === 'string' ? address : undefined,
      port,
      hostname: typeof hostname === 'string' ? hostname : undefined,
    };
  }
  if (error instanceof Error && TIMEOUT_MESSAGES.some((pattern) => pattern.test(text))) {
    // pg's timeout says nothing more; the socket error it ended may (its cause).
    return find(cause, depth + 1) ?? { code: 'timeout', message: text };
  }
  return find(driverError, depth + 1) ?? find(cause, depth + 1);
}

function placeOf(found: Found, target: ConnectTarget | undefined): string | undefined {
  if (target) return target.host.startsWith('/') ? `${target.host} (socket, port ${target.port})` : `${bracketed(target.host)}:${target.port}`;
  if (found.address) return found.port === undefined ? found.address : `${bracketed(found.address)}:${String(found.port)}`;
  return found.hostname;
}

const bracketed = (host: string) => (host.includes(':') && !host.startsWith('[') ? `[${host}]` : host);

// A server's message is one line; made sure of, since this line is printed alone.
const oneLine = (text: string) => text.replace(/\s+/g, ' ').trim();
