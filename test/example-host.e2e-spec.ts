import assert from 'node:assert/strict';
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { newUserInput } from './helpers/factories';
import { emptyDatabase } from './helpers/test-app';

const run = promisify(execFile);
const REPO = join(__dirname, '..', '..');
const EXAMPLE = join(REPO, 'examples', 'host-app');
const TSC = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
/** Hosts built by earlier runs of this file on the same dist/ (`npm test` empties it), by the digest of their inputs. */
const BUILT_HOSTS = join(__dirname, '..', 'example-hosts');
/** What the package and the host are built from (the package's `files` and the build's settings, the host's sources). */
const BUILD_INPUTS = ['src', 'data', 'package.json', 'README.md', 'SECURITY.md', 'tsconfig.json', 'tsconfig.build.json', 'examples/host-app'];

/**
 * The package as `npm pack` makes it: built with declarations (tsconfig.build.json) into a
 * staging copy (so the running tests' own build is left alone), packed without scripts.
 */
async function packSessionary(work: string): Promise<string> {
  const stage = join(work, 'stage');
  mkdirSync(stage);
  await run(process.execPath, [TSC, '-p', join(REPO, 'tsconfig.build.json'), '--outDir', join(stage, 'dist')]);
  for (const entry of ['package.json', 'README.md', 'SECURITY.md', 'data']) cpSync(join(REPO, entry), join(stage, entry), { recursive: true });
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--silent', '--pack-destination', work], { cwd: stage });
  return join(work, stdout.trim().split('\n').pop()!);
}

/**
 * The example host app with the tarball installed as `sessionary`; its other dependencies are
 * the repository's own (linked: there is no registry to install from in a test).
 */
async function buildHost(work: string, tarball: string): Promise<string> {
  const host = join(work, 'host');
  cpSync(EXAMPLE, host, { recursive: true, filter: (path) => !path.includes(`${join(EXAMPLE, 'dist')}`) && !path.includes('node_modules') });
  const modules = join(host, 'node_modules');
  mkdirSync(modules);
  for (const entry of readdirSync(join(REPO, 'node_modules'))) symlinkSync(join(REPO, 'node_modules', entry), join(modules, entry));
  await run('tar', ['-xzf', tarball, '-C', modules]);
  renameSync(join(modules, 'package'), join(modules, 'sessionary'));
  await run(process.execPath, [TSC, '-p', join(host, 'tsconfig.json')]);
  return host;
}

/** A digest of every file the build reads (host outputs left out), of the TypeScript that compiles them, and of where the repository is. */
function digestOfInputs(): string {
  const hash = createHash('sha256')
    .update(REPO)
    .update(readFileSync(join(REPO, 'node_modules', 'typescript', 'package.json')));
  const add = (relative: string): void => {
    const path = join(REPO, relative);
    if (statSync(path).isDirectory()) {
      for (const name of readdirSync(path).sort()) if (name !== 'dist' && name !== 'node_modules') add(join(relative, name));
    } else hash.update(`${relative}\0`).update(readFileSync(path)).update('\0');
  };
  for (const input of BUILD_INPUTS) add(input);
  return hash.digest('hex').slice(0, 16);
}

/**
 * The host, built against the packed package once for these sources: the suite's runs on Node
 * 22 and 24 (scripts/test-other-nodes.sh, on the same dist/) start the host the run on Node 20
 * built, under their own Node, instead of compiling the package and the host again (about 20 s
 * of a core each); the compiled files do not depend on the Node that runs them.
 */
async function builtHost(): Promise<string> {
  const dir = join(BUILT_HOSTS, digestOfInputs());
  const done = join(dir, '.built');
  if (existsSync(done)) return join(dir, 'host');
  rmSync(BUILT_HOSTS, { recursive: true, force: true }); // hosts of other sources, or a build cut short
  mkdirSync(dir, { recursive: true });
  const tarball = await packSessionary(dir);
  await buildHost(dir, tarball);
  rmSync(join(dir, 'stage'), { recursive: true, force: true });
  rmSync(tarball);
  writeFileSync(done, '');
  return join(dir, 'host');
}

function startHost(host: string, env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const child = spawn(process.execPath, [join(host, 'dist', 'main.js')], { cwd: host, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the host did not start:\n${output}`)), 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString('utf8');
      const match = /host listening on (http:\/\/\S+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve({ child, url: match[1].replace('[::1]', '127.0.0.1'), output: () => output });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the host exited (${code}):\n${output}`));
    });
  });
}

describe('the example host app, built against the packed package (e2e)', () => {
  let host: { child: ChildProcess; url: string; output: () => string };
  let hostDir: string;
  let env: NodeJS.ProcessEnv;

  before(async () => {
    hostDir = await builtHost();
    const secret = () => randomBytes(48).toString('base64');
    env = {
      PATH: process.env.PATH,
      NODE_ENV: 'test',
      PORT: '0',
      DATABASE_URL: await emptyDatabase(),
      JWT_SECRET: secret(),
      PASSWORD_PEPPER: secret(),
      AUDIT_HMAC_KEY: secret(),
      KEY_ENCRYPTION_KEY: secret(),
    };
    host = await startHost(hostDir, env);
  });
  after(() => {
    host?.child.kill('SIGTERM');
  });

  const call = (path: string, init: RequestInit = {}) => fetch(`${host.url}${path}`, init);
  const json = (body: unknown): RequestInit => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it('serves /orders 401 without a token and 200 {userId, sessionId} with one, the catalog without one, and hears the logout', async () => {
    assert.equal((await call('/orders')).status, 401);
    const catalog = await call('/orders/catalog');
    assert.equal(catalog.status, 200);
    assert.deepEqual(await catalog.json(), []);

    const user = newUserInput();
    const registered = await call('/api/v1/auth/register', json(user));
    assert.equal(registered.status, 201);
    const { id: userId } = (await registered.json()) as { id: string };
    const login = await call('/api/v1/auth/login', json({ email: user.email, password: user.password }));
    assert.equal(login.status, 200);
    const { accessToken, sessionId } = (await login.json()) as { accessToken: string; sessionId: string };
    const auth = { headers: { authorization: `Bearer ${accessToken}` } };

    const mine = await call('/orders', auth);
    assert.equal(mine.status, 200);
    assert.deepEqual(await mine.json(), { userId, sessionId });

    assert.equal((await call('/api/v1/auth/logout', { method: 'POST', ...auth })).status, 204);
    assert.equal((await call('/orders', auth)).status, 401);
    // The host's listener logs each session.ended it hears (its output reaches us through a pipe).
    const heard = new RegExp(`session ended: ${sessionId} logout`);
    for (let i = 0; i < 50 && !heard.test(host.output()); i++) await new Promise((resolve) => setTimeout(resolve, 100));
    assert.match(host.output(), heard);
  });

  it("runs the package's CLI (its `sessionary` bin) from the host's install, with the host's settings", async () => {
    const installed = join(hostDir, 'node_modules', 'sessionary');
    const { bin } = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    const cli = join(installed, bin.sessionary);
    assert.match(readFileSync(cli, 'utf8'), /^#!\/usr\/bin\/env node\n/, 'npm links a bin that says how to run it');
    const { stdout } = await run(process.execPath, [cli, 'keys', 'list'], { cwd: hostDir, env });
    // The ring the running host made: one current key (kid, algorithm, state, times; never a secret).
    assert.match(stdout, /\bES256\b/);
    assert.match(stdout, /\bcurrent\b/);
  });
});
