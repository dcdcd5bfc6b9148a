/**
 * The service under test: built (`dist/src/main.js`), in its own process, on a database of its
 * own made for the run, with production defaults and secrets generated for the run.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { createServer, AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Client } from 'pg';
import { ENV_VARIABLES } from '../../src/config/env.schema';

export const MAIN_JS = join(__dirname, '..', '..', 'src', 'main.js');

export function withDatabase(serverUrl: string, database: string): string {
  const u = new URL(serverUrl);
  u.pathname = `/${database}`;
  return u.toString();
}

async function onServer(serverUrl: string, statement: string): Promise<void> {
  const client = new Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

export async function createDatabase(serverUrl: string): Promise<string> {
  const name = `sessionary_bench_${Date.now()}_${randomBytes(3).toString('hex')}`;
  await onServer(serverUrl, `CREATE DATABASE "${name}"`);
  return name;
}

export async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  await onServer(serverUrl, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

export interface ServiceOptions {
  databaseUrl: string;
  port: number;
  jwtSecret: string;
  rateLimitPerMinute: number;
  /** Unset: the service's own default (production's). */
  bcryptCost?: number;
  /** The service's stdout and stderr go here, as they would to a log collector. */
  logFile: string;
  /** Working directory: a scratch folder, so no developer's `.env` changes the configuration. */
  cwd: string;
  /** Unset: the default (ES256). */
  signingAlgorithm?: 'ES256' | 'HS256';
}

/**
 * The environment of the service: the caller's, minus every variable the service reads, plus
 * the run's. So nothing the developer has set changes what is measured: production defaults.
 */
export function serviceEnv(options: ServiceOptions): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const key of ENV_VARIABLES) delete env[key];
  Object.assign(env, {
    NODE_ENV: 'production',
    HOST: '127.0.0.1',
    PORT: String(options.port),
    DATABASE_URL: options.databaseUrl,
    JWT_SECRET: options.jwtSecret,
    PASSWORD_PEPPER: randomBytes(48).toString('base64'),
    AUDIT_HMAC_KEY: randomBytes(48).toString('base64'),
    KEY_ENCRYPTION_KEY: randomBytes(48).toString('base64'),
    RATE_LIMIT_PER_MINUTE: String(options.rateLimitPerMinute),
    // The bench registers its users (dozens) from one address; the limit is not what it measures.
    REGISTER_MAX_PER_IP: '0',
  });
  if (options.signingAlgorithm !== undefined) env.SIGNING_ALGORITHM = options.signingAlgorithm;
  if (options.bcryptCost !== undefined) env.BCRYPT_COST = String(options.bcryptCost);
  return env;
}

export function startService(options: ServiceOptions): ChildProcess {
  if (!existsSync(MAIN_JS)) throw new Error(`${MAIN_JS} is missing: build first (npm run bench builds it)`);
  const log = openSync(options.logFile, 'a');
  try {
    return spawn(process.execPath, [MAIN_JS], { cwd: options.cwd, env: serviceEnv(options), stdio: ['ignore', log, log] });
  } finally {
    closeSync(log);
  }
}

/** Polls /health/live until it answers 200; fails as soon as the process exits. */
export async function waitUntilLive(baseUrl: string, child: ChildProcess, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the service exited (${child.signalCode ?? child.exitCode})`);
    try {
      const res = await fetch(`${baseUrl}/health/live`);
      if (res.ok) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`the service did not answer /health/live within ${timeoutMs} ms`);
}

export function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Error and fatal lines of the service's JSON log (Nest's level names or pino's numbers). */
export function logProblems(file: string, keep = 5): { count: number; examples: string[] } {
  let count = 0;
  const examples: string[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    let level: unknown;
    try {
      level = (JSON.parse(line) as { level?: unknown }).level;
    } catch {
      continue;
    }
    if (level === 'error' || level === 'fatal' || (typeof level === 'number' && level >= 50)) {
      count++;
      if (examples.length < keep) examples.push(line.slice(0, 300));
    }
  }
  return { count, examples };
}

/**
 * Transactions committed in the service's database, read through a connection to another
 * database of the server (the one DATABASE_URL names), so reading does not count itself.
 */
export class CommitCounter {
  private readonly client: Client;

  constructor(
    serverUrl: string,
    private readonly database: string,
  ) {
    this.client = new Client({ connectionString: serverUrl });
  }

  async connect(): Promise<string> {
    await this.client.connect();
    const { rows } = await this.client.query<{ server_version: string }>('SHOW server_version');
    return rows[0].server_version;
  }

  async read(): Promise<number> {
    // Outside a transaction each read takes a fresh statistics snapshot (stats_fetch_consistency).
    const { rows } = await this.client.query<{ xact_commit: string }>('SELECT xact_commit FROM pg_stat_database WHERE datname = $1', [this.database]);
    return Number(rows[0]?.xact_commit ?? NaN);
  }

  close(): Promise<void> {
    return this.client.end();
  }
}
