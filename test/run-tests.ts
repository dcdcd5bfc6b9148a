/**
 * `npm test`: makes a fresh database for this run on DATABASE_URL's server (or, without
 * DATABASE_URL, on an embedded PostgreSQL in a temporary folder), runs every unit and e2e
 * spec with Node's test runner against it, then drops it.
 */
import { Logger } from '@nestjs/common';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { dataSourceOptions } from '../src/database/data-source.options';
import { startEmbeddedPostgres, EmbeddedDatabase } from '../src/database/embedded-postgres';
import { runMigrationsLocked } from '../src/database/migrate';
import { inCi } from './helpers/ci';
import { TypeOrmNestLogger } from '../src/database/typeorm-logger';

const DIST = join(__dirname, '..');

function specFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return specFiles(path);
    return /\.(e2e-)?spec\.js$/.test(name) ? [path] : [];
  });
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

async function admin(url: string, statement: string): Promise<void> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

/**
 * A spec file by its path from the repository, without `dist/` or extension: the runner names
 * a test's file by the compiled path, or by the TypeScript source's where a source map leads
 * (--enable-source-maps).
 */
function specName(file: string): string {
  return relative(join(DIST, '..'), file)
    .replace(/^dist[/\\]/, '')
    .replace(/\.[jt]s$/, '');
}

/** The name of the run's migrated database that test files copy (test/helpers/test-app.ts). */
const templateOf = (database: string): string => `${database}_template`;

/**
 * Makes the run's template: a database with every migration applied, which test files copy
 * (CREATE DATABASE … TEMPLATE, about 0.1 s) instead of migrating a database of their own
 * (about 0.45 s each, for 121 databases in a full run). Its connections are closed before any
 * file copies it: PostgreSQL copies only a database nobody is connected to.
 */
async function makeTemplate(serverUrl: string, database: string): Promise<string> {
  const template = templateOf(database);
  await admin(serverUrl, `CREATE DATABASE "${template}"`);
  const source = await new DataSource({
    ...dataSourceOptions(withDatabase(serverUrl, template)),
    logging: ['warn'],
    logger: new TypeOrmNestLogger(['warn']),
  }).initialize();
  try {
    await runMigrationsLocked(source);
  } finally {
    await source.destroy();
  }
  return template;
}

/** The run's database and the per-file ones made beside it (test/helpers/test-app.ts). */
async function dropDatabases(serverUrl: string, database: string): Promise<void> {
  const client = new Client({ connectionString: serverUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ datname: string }>(
      `SELECT datname FROM pg_database WHERE datname = $1 OR datname = $2 OR datname LIKE $1 || '\\_p%'`,
      [database, templateOf(database)],
    );
    for (const { datname } of rows) await client.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

async function main(): Promise<number> {
  const logger = new Logger('tests');
  let embedded: EmbeddedDatabase | undefined;
  let tempDir: string | undefined;
  let serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    tempDir = mkdtempSync(join(tmpdir(), 'sessionary-test-'));
    logger.log('DATABASE_URL is not set: running the tests on an embedded PostgreSQL');
    embedded = await startEmbeddedPostgres({ dataDir: join(tempDir, 'pg'), logger });
    serverUrl = embedded.url;
  }
  const database = `sessionary_test_${Date.now()}_${randomBytes(3).toString('hex')}`;
  await admin(serverUrl, `CREATE DATABASE "${database}"`);
  try {
    const template = await makeTemplate(serverUrl, database);
    // File-name fragments: the files to run (all when none), and `!fragment` the files to leave out.
    const filter = process.argv.slice(2).filter((arg) => !arg.startsWith('!'));
    const excluded = process.argv
      .slice(2)
      .filter((arg) => arg.startsWith('!'))
      .map((arg) => arg.slice(1));
    // The largest files first: two run at a time, and a long file that started last would run
    // alone at the end with a core idle (a file's size is a fair guess of how long it runs).
    const files = [...specFiles(join(DIST, 'src')), ...specFiles(join(DIST, 'test'))]
      .filter((f) => !filter.length || filter.some((pattern) => relative(DIST, f).includes(pattern)))
      .filter((f) => !excluded.some((pattern) => relative(DIST, f).includes(pattern)))
      .sort((a, b) => statSync(b).size - statSync(a).size);
    // Given no file, `node --test` would search the working directory for tests of its own (on
    // Node 20, every .js under a `test` folder, this runner and the helpers included, each a pass).
    if (!files.length) {
      logger.error(
        `No spec file matches ${process.argv
          .slice(2)
          .map((f) => JSON.stringify(f))
          .join(', ')}`,
      );
      return 1;
    }
    // The spec reporter for people; a TAP copy to count from, for the plain closing line; and
    // each file's number of tests, since a file that registers none passes unnoticed otherwise.
    // Files at a time (TEST_CONCURRENCY, default 2, for a 2-core box): many files spend much of
    // their time waiting (retry windows, timeouts, real processes starting), not on the CPU.
    const concurrency = testConcurrency(process.env.TEST_CONCURRENCY);
    const tapFile = join(tmpdir(), `sessionary-tests-${process.pid}.tap`);
    const perFileFile = join(tmpdir(), `sessionary-tests-${process.pid}.per-file`);
    const code = await new Promise<number>((resolve) => {
      const child = spawn(
        process.execPath,
        [
          '--enable-source-maps',
          '--test',
          `--test-concurrency=${concurrency}`,
          '--test-reporter=spec',
          '--test-reporter-destination=stdout',
          '--test-reporter=tap',
          `--test-reporter-destination=${tapFile}`,
          `--test-reporter=${join(__dirname, 'helpers', 'tests-per-file-reporter.js')}`,
          `--test-reporter-destination=${perFileFile}`,
          ...files,
        ],
        {
          stdio: 'inherit',
          env: { ...process.env, NODE_ENV: 'test', DATABASE_URL: withDatabase(serverUrl!, database), TEST_TEMPLATE_DATABASE: template },
        },
      );
      child.on('exit', (c) => resolve(c ?? 1));
    });
    const tap = readFileSync(tapFile, 'utf8');
    rmSync(tapFile, { force: true });
    const testsIn = new Map<string, number>();
    for (const line of readFileSync(perFileFile, 'utf8').split('\n').filter(Boolean)) {
      const { file, tests } = JSON.parse(line) as { file: string; tests: number };
      testsIn.set(specName(file), (testsIn.get(specName(file)) ?? 0) + tests);
    }
    rmSync(perFileFile, { force: true });
    const empty = files.filter((file) => !testsIn.get(specName(file)));
    const count = (name: string) => Number(new RegExp(`^# ${name} (\\d+)$`, 'm').exec(tap)?.[1] ?? 0);
    process.stdout.write(
      `\ntests: ${count('pass')} passed, ${count('fail')} failed, ${count('skipped')} skipped${count('todo') ? `, ${count('todo')} todo` : ''}${
        count('cancelled') ? `, ${count('cancelled')} cancelled` : ''
      }\n`,
    );
    // A test cancelled (its suite's hook failed, or it outlived its parent) did not run: the
    // summary said "0 failed" beside it (until 0.25.0), whatever the exit code.
    if (code === 0 && count('cancelled') > 0) {
      logger.error(`${count('cancelled')} tests were cancelled`);
      return 1;
    }
    // A run is green only if it tested something, and in CI only if it skipped nothing (a test
    // skipped there, e.g. for want of a browser, is a test that did not run).
    if (code === 0 && count('pass') === 0) {
      logger.error('No test passed: the run tested nothing');
      return 1;
    }
    // A spec file that registered no test tested nothing, whatever its suites say.
    if (code === 0 && empty.length) {
      logger.error(`No test registered in ${empty.map((file) => relative(DIST, file)).join(', ')}`);
      return 1;
    }
    // Node runs a todo test but never fails the run on it, pass or fail: a stub kept as a test.
    if (code === 0 && count('todo') > 0) {
      logger.error(`${count('todo')} tests are marked todo: finish them or remove them`);
      return 1;
    }
    if (code === 0 && inCi() && count('skipped') > 0) {
      logger.error(`${count('skipped')} tests were skipped, which CI does not allow`);
      return 1;
    }
    return code;
  } finally {
    await dropDatabases(serverUrl, database).catch((e: Error) => logger.warn(`Could not drop the test databases: ${e.message}`));
    await embedded?.stop();
    if (tempDir) rmSync(tempDir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    new Logger('tests').error(error instanceof Error ? (error.stack ?? error.message) : String(error));
    process.exit(1);
  },
);

/** TEST_CONCURRENCY as a count of files at a time: 2 when unset; anything but 1 to 16 is refused. */
function testConcurrency(value: string | undefined): number {
  if (value === undefined || value === '') return 2;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new Error(`TEST_CONCURRENCY must be a whole number from 1 to 16, not ${JSON.stringify(value)}`);
  return n;
}
