import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { findFreePort } from '../src/database/embedded-postgres';
import { deploymentEnv } from './helpers/service-process';

const MAIN = join(__dirname, '..', 'src', 'main.js');
// In every URL below: it must never reach the output.
const PASSWORD = 'pw-XYZZY-never-logged';

/** The run's server with another database, user, host or port, and PASSWORD. */
function urlWith(change: { database?: string; user?: string; host?: string; port?: string }): string {
  const url = new URL(process.env.DATABASE_URL!);
  url.password = PASSWORD;
  if (change.database) url.pathname = `/${change.database}`;
  if (change.user) url.username = change.user;
  if (change.host) url.hostname = change.host;
  if (change.port) url.port = change.port;
  return url.toString();
}

interface Ended {
  code: number | null;
  output: string;
  ms: number;
}

/** The built service (`node dist/src/main.js`) with `databaseUrl`, until it ends by itself. */
async function boot(dataDir: string, databaseUrl: string, format: 'json' | 'text'): Promise<Ended> {
  const env = {
    PATH: process.env.PATH ?? '',
    ...deploymentEnv(databaseUrl, { LOG_LEVEL: 'log', LOG_FORMAT: format, DATA_DIR: dataDir }),
    HOST: '127.0.0.1',
    PORT: String(await findFreePort()),
  };
  const started = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN], { env, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? ((error as { code?: number }).code ?? null) : 0, output: stdout + stderr, ms: Date.now() - started });
    });
  });
}

/** The output's fatal line (one, JSON or text), after asserting what no line may hold. */
function fatalLine(ended: Ended): string {
  const lines = ended.output.split('\n').filter(Boolean);
  assert.equal(ended.code, 1, ended.output);
  assert.ok(!ended.output.includes(PASSWORD), ended.output);
  // Neither Nest's ExceptionHandler (its stack) nor TypeOrmModule's "Unable to connect" retries.
  assert.ok(!lines.some((line) => /^\s+at |\\n\s+at |"stack"|ExceptionHandler|Unable to connect/.test(line)), ended.output);
  const fatal = lines.filter((line) => /FATAL|"level":"fatal"/.test(line));
  assert.equal(fatal.length, 1, ended.output);
  return fatal[0];
}

/**
 * A start that fails while Nest makes the app (its database's first connection) ends through
 * main.ts's catch: exit code 1 and one line saying which server and why, without a stack or the
 * password. Until 0.24.1 Nest's abortOnError logged the driver's stack and ended the process
 * itself, and a refused connection took ten "Unable to connect" stacks and 27 s first.
 */
describe('a start that cannot connect to its database (e2e, the built service)', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'sessionary-startup-'));
  after(() => rmSync(dataDir, { recursive: true, force: true }));

  for (const format of ['json', 'text'] as const) {
    it(`a database that does not exist: one ${format} line naming it and the server, at once`, async () => {
      const url = urlWith({ database: 'no_such_database_xyzzy' });
      const ended = await boot(dataDir, url, format);
      const line = fatalLine(ended);
      assert.ok(line.includes(`PostgreSQL at ${new URL(url).host} refused the connection: database`), line);
      assert.match(line, /no_such_database_xyzzy\\?" does not exist \(SQLSTATE 3D000\); create that database, or correct its name in DATABASE_URL/);
      assert.ok(ended.ms < 15_000, `${ended.ms} ms`);
    });
  }

  it('a user that does not exist: one line, the server refusing it (28000, or 28P01 where it asks for a password)', async () => {
    const line = fatalLine(await boot(dataDir, urlWith({ user: 'no_such_user_xyzzy' }), 'json'));
    assert.match(line, /refused the connection: .*no_such_user_xyzzy.* \(SQLSTATE (28000|28P01)\); check the user name/);
  });

  it('a host name that does not resolve: one line naming it, at once (waiting would not mend it)', async () => {
    const ended = await boot(dataDir, urlWith({ host: 'no-such-host.invalid' }), 'json');
    const line = fatalLine(ended);
    assert.match(line, /Cannot connect to PostgreSQL at no-such-host\.invalid:\d+ \((ENOTFOUND|EAI_AGAIN)\): the host name/);
    assert.doesNotMatch(ended.output, /trying again/);
  });

  it('nothing listening: a line a try while it may yet come (a server starting beside it: about 27 s), then the one fatal line', async () => {
    const port = String(await findFreePort());
    const ended = await boot(dataDir, urlWith({ host: '127.0.0.1', port }), 'json');
    const line = fatalLine(ended);
    assert.match(line, new RegExp(`Cannot connect to PostgreSQL at 127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\): nothing listens there`));
    const tries = ended.output.split('\n').filter((l) => l.includes('trying again in 3 s'));
    assert.equal(tries.length, 9, ended.output);
  });
});
