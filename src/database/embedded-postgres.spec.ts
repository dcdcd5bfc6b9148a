import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { LoggerService } from '@nestjs/common';
import { Client } from 'pg';
import { startEmbeddedPostgres, type EmbeddedDatabase } from './embedded-postgres';

const TEST_TIMEOUT = { timeout: 45_000 };

function recordingLogger(lines: string[]): LoggerService {
  const record = (level: string) => (message: unknown) => void lines.push(`${level} ${String(message)}`);
  return { log: record('log'), warn: record('warn'), error: record('error'), debug: record('debug'), verbose: record('verbose') };
}

async function query<T extends object>(url: string, sql: string): Promise<T[]> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

function postmasterPid(dataDir: string): number | undefined {
  try {
    return Number.parseInt(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0] ?? '', 10);
  } catch {
    return undefined;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2));
  } catch {
    return false;
  }
}

async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return true;
}

// A separate Node process that starts the database, reports its URL and then waits. In "app"
// mode it also listens to SIGTERM the way Nest's enableShutdownHooks does: it still uses the
// database, then calls stop(), removes its listener and re-raises the signal.
const CHILD_SOURCE = `
const [modulePath, dataDir, mode] = process.argv.slice(2);
const { startEmbeddedPostgres } = require(modulePath);
const { Client } = require(${JSON.stringify(require.resolve('pg'))});
const write = (line) => process.stderr.write(line + '\\n');
const logger = { log: write, warn: write, error: write };
startEmbeddedPostgres({ dataDir, logger }).then((db) => {
  if (mode === 'app') {
    const onTerm = async () => {
      const client = new Client({ connectionString: db.url });
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
      process.stdout.write('QUERY_OK\\n');
      await db.stop();
      process.removeListener('SIGTERM', onTerm);
      process.kill(process.pid, 'SIGTERM');
    };
    process.on('SIGTERM', onTerm);
  }
  setInterval(() => undefined, 60_000);
  process.stdout.write(JSON.stringify({ url: db.url }) + '\\n');
}, (error) => { write(error.message); process.exit(1); });
`;

interface Child {
  process: ChildProcess;
  url: Promise<string>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout(): string;
  stderr(): string;
}

const children = new Set<ChildProcess>();

function startChild(childFile: string, dataDir: string, mode: 'plain' | 'app'): Child {
  const modulePath = path.join(__dirname, 'embedded-postgres.js');
  const child = spawn(process.execPath, [childFile, modulePath, dataDir, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const url = new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const line = stdout.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve((JSON.parse(line) as { url: string }).url);
    });
    void exited.then(() => reject(new Error(`child exited before it was ready:\n${stderr}`)));
  });
  return { process: child, url, exited, stdout: () => stdout, stderr: () => stderr };
}

// The service's secrets as this process has them while the first start makes the cluster.
const SECRETS = Object.fromEntries(
  ['JWT_SECRET', 'PASSWORD_PEPPER', 'AUDIT_HMAC_KEY', 'KEY_ENCRYPTION_KEY', 'METRICS_TOKEN', 'AUDIT_SHIP_AUTHORIZATION'].map((name) => [
    name,
    `${name.toLowerCase()}-${randomBytes(12).toString('hex')}`,
  ]),
);

/** Where the package put initdb's password file, and who else could read it then. */
interface PasswordFile {
  file: string;
  fileMode: number;
  folderMode: number;
}

describe('startEmbeddedPostgres', () => {
  const logs: string[] = [];
  const logger = recordingLogger(logs);
  const passwords = new Set<string>();
  const passwordFiles: PasswordFile[] = [];
  const writeFile = fs.writeFile;
  let baseDir: string;
  let dataDir: string;
  let childFile: string;
  let current: EmbeddedDatabase | undefined;

  async function start(): Promise<EmbeddedDatabase> {
    current = await startEmbeddedPostgres({ dataDir, logger });
    passwords.add(decodeURIComponent(new URL(current.url).password));
    return current;
  }

  before(async () => {
    baseDir = await fs.mkdtemp(path.join(os.tmpdir(), 'sessionary-ep-'));
    dataDir = path.join(baseDir, 'pg');
    childFile = path.join(baseDir, 'child.js');
    await fs.writeFile(childFile, CHILD_SOURCE);
    Object.assign(process.env, SECRETS);
    // The package (an ES module) writes initdb's password file with this same fs/promises
    // object's writeFile: noted as it is written, before initdb has read and the package removed it.
    fs.writeFile = (async (...args: Parameters<typeof writeFile>) => {
      await writeFile(...args);
      const [file] = args;
      if (typeof file === 'string' && path.basename(file).startsWith('pg-password-')) {
        const [fileStat, folderStat] = await Promise.all([fs.stat(file), fs.stat(path.dirname(file))]);
        passwordFiles.push({ file, fileMode: fileStat.mode & 0o777, folderMode: folderStat.mode & 0o7777 });
      }
    }) as typeof writeFile;
  });

  after(async () => {
    fs.writeFile = writeFile;
    for (const name of Object.keys(SECRETS)) delete process.env[name];
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await current?.stop().catch(() => undefined);
    const leftover = postmasterPid(dataDir);
    if (leftover && isAlive(leftover)) process.kill(leftover, 'SIGQUIT');
    await fs.rm(baseDir, { recursive: true, force: true });
  });

  it('initialises a UTF8 cluster and serves database "sessionary" on a free loopback port', TEST_TIMEOUT, async () => {
    const db = await start();
    const url = new URL(db.url);
    assert.equal(url.protocol, 'postgres:');
    assert.equal(url.hostname, '127.0.0.1');
    assert.notEqual(url.port, '5432');
    assert.equal(url.pathname, '/sessionary');

    const [row] = await query<{ encoding: string; database: string }>(
      db.url,
      "SELECT current_setting('server_encoding') AS encoding, current_database() AS database",
    );
    assert.deepEqual(row, { encoding: 'UTF8', database: 'sessionary' });
    await query(db.url, "CREATE TABLE persisted (note text); INSERT INTO persisted VALUES ('kept é')");
  });

  // Until 0.24.1 the package's {...process.env} gave them to initdb and postgres, in whose
  // environment the database's superuser reads them (pg_read_file('/proc/<pid>/environ')).
  it("keeps the service's secrets out of PostgreSQL's environment, and initdb's password file from other users", async () => {
    const pid = postmasterPid(dataDir)!;
    const environment = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
    assert.ok(
      environment.some((entry) => entry.startsWith('PATH=')),
      'the environment was read',
    );
    for (const [name, value] of Object.entries(SECRETS)) {
      assert.ok(!environment.some((entry) => entry.startsWith(`${name}=`) || entry.includes(value)), `${name} reached PostgreSQL`);
      assert.equal(process.env[name], value, `${name} is back in this process's environment`);
    }
    // The package's file, in a folder of its own that only initdb's user may enter (it was in
    // /tmp, mode 0644 under the usual umask: readable by every local user while initdb ran).
    assert.equal(passwordFiles.length, 1, JSON.stringify(passwordFiles));
    const [{ file, fileMode, folderMode }] = passwordFiles;
    assert.ok((folderMode & 0o077) === 0 || (fileMode & 0o077) === 0, `${file}: ${fileMode.toString(8)} in a folder of ${folderMode.toString(8)}`);
    await assert.rejects(fs.stat(path.dirname(file)), { code: 'ENOENT' }, 'the folder is gone');
  });

  it('stop() shuts the server down and can be called again', TEST_TIMEOUT, async () => {
    const db = current!;
    const pid = postmasterPid(dataDir)!;
    await Promise.all([db.stop(), db.stop()]);
    await db.stop();
    assert.equal(isAlive(pid), false);
    await assert.rejects(query(db.url, 'SELECT 1'));
  });

  it('reuses the cluster on the next start: data persists', TEST_TIMEOUT, async () => {
    const first = current!.url;
    const db = await start();
    assert.notEqual(db.url, first, 'a new port is chosen on every start');
    assert.equal(new URL(db.url).password, new URL(first).password, 'the cluster is not initialised again');
    assert.deepEqual(await query(db.url, 'SELECT note FROM persisted'), [{ note: 'kept é' }]);
    await db.stop();
  });

  it('shuts down the postmaster orphaned by a SIGKILLed process, then starts', TEST_TIMEOUT, async () => {
    const child = startChild(childFile, dataDir, 'plain');
    await child.url;
    const orphan = postmasterPid(dataDir)!;
    child.process.kill('SIGKILL');
    await child.exited;
    assert.equal(isAlive(orphan), true, 'the postmaster outlives the killed process');

    const db = await start();
    assert.equal(isAlive(orphan), false);
    assert.notEqual(postmasterPid(dataDir), orphan);
    assert.deepEqual(await query(db.url, 'SELECT note FROM persisted'), [{ note: 'kept é' }]);
    assert.ok(logs.some((line) => line.startsWith('warn') && line.includes(`orphaned PostgreSQL (pid ${orphan})`)));
    await db.stop();
  });

  // SIGQUIT too: until 0.20.4 the app closed on it (Nest listened) and PostgreSQL was left running.
  for (const signal of ['SIGTERM', 'SIGQUIT'] as const) {
    it(`on ${signal} with no other listener, stops PostgreSQL and lets the signal end the process`, TEST_TIMEOUT, async () => {
      const child = startChild(childFile, dataDir, 'plain');
      await child.url;
      const pid = postmasterPid(dataDir)!;
      child.process.kill(signal);
      assert.deepEqual(await child.exited, { code: null, signal });
      assert.equal(isAlive(pid), false, child.stderr());
    });
  }

  it('on SIGTERM with an app listener, leaves the shutdown to the app, which calls stop()', TEST_TIMEOUT, async () => {
    const child = startChild(childFile, dataDir, 'app');
    await child.url;
    const pid = postmasterPid(dataDir)!;
    child.process.kill('SIGTERM');
    assert.deepEqual(await child.exited, { code: null, signal: 'SIGTERM' });
    assert.match(child.stdout(), /QUERY_OK/, `the database stayed up during the app's shutdown:\n${child.stderr()}`);
    assert.equal(await waitUntil(() => !isAlive(pid), 5_000), true);
  });

  // Until 0.24.1 every failed start advised deleting the data dir, whatever PostgreSQL said.
  it(
    'advises deleting the data dir only where that is the way out: not for a setting it refuses, but for another version',
    TEST_TIMEOUT,
    async () => {
      const autoConf = path.join(dataDir, 'postgresql.auto.conf');
      const versionFile = path.join(dataDir, 'PG_VERSION');
      const [conf, version] = await Promise.all([fs.readFile(autoConf, 'utf8'), fs.readFile(versionFile, 'utf8')]);
      try {
        await fs.appendFile(autoConf, "shared_buffers = 'plenty'\n");
        await assert.rejects(startEmbeddedPostgres({ dataDir, logger }), (error: Error) => {
          assert.match(error.message, /^Embedded PostgreSQL: could not start PostgreSQL on /);
          assert.match(error.message, /What to do: correct or remove the setting named above .*do not delete it/);
          assert.doesNotMatch(error.message.slice(error.message.indexOf('What to do:')), /delete \//);
          return true;
        });
        await fs.writeFile(autoConf, conf);
        await fs.writeFile(versionFile, '16\n');
        await assert.rejects(startEmbeddedPostgres({ dataDir, logger }), (error: Error) => {
          assert.match(
            error.message,
            /What to do: the data dir was made by another PostgreSQL major version: .*pg_upgrade.*deleting \/.* starts over/,
          );
          return true;
        });
      } finally {
        await Promise.all([fs.writeFile(autoConf, conf), fs.writeFile(versionFile, version)]);
      }
      // As it was: the data is whole.
      const db = await start();
      assert.deepEqual(await query(db.url, 'SELECT note FROM persisted'), [{ note: 'kept é' }]);
      await db.stop();
    },
  );

  it('explains a data dir it cannot use instead of failing with a bare error', TEST_TIMEOUT, async () => {
    const foreign = path.join(baseDir, 'foreign');
    await fs.mkdir(foreign);
    await fs.writeFile(path.join(foreign, 'notes.txt'), 'not a cluster');
    await assert.rejects(startEmbeddedPostgres({ dataDir: foreign, logger }), (error: Error) => {
      assert.match(error.message, /^Embedded PostgreSQL: could not initialise the data dir: .*holds no PostgreSQL cluster/);
      assert.match(error.message, /What to do: .*DATABASE_URL/);
      return true;
    });
  });

  it('never logs the database password', () => {
    assert.ok(passwords.size > 0);
    for (const password of passwords) {
      assert.equal(logs.filter((line) => line.includes(password)).length, 0);
    }
  });
});
