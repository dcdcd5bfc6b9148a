/**
 * The Dockerfile's HEALTHCHECK command, run as the image runs it (node -e, in the working
 * directory), against a local server standing in for the service: it must find the service
 * where the service listens, whether HOST and PORT come from the environment or from a .env
 * file, as the service reads them (until 0.22.0 it read the environment only, and a .env's PORT
 * left the container unhealthy).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

const ROOT = join(__dirname, '..', '..');

/** The script of `HEALTHCHECK … CMD node -e "<script>"`. */
function healthcheckScript(): string {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const match = /^HEALTHCHECK[^\n]*\\\n\s*CMD node -e "([^"\n]+)"$/m.exec(dockerfile);
  assert.ok(match, 'the Dockerfile has a HEALTHCHECK running node -e "…"');
  return match[1];
}

/** The command's exit code, run in `cwd` with exactly `env` (and PATH). */
function runCheck(cwd: string, env: Record<string, string>): Promise<number> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', healthcheckScript()], { cwd, env: { PATH: process.env.PATH ?? '', ...env }, timeout: 10_000 }, (error) =>
      resolve(error ? ((error as { code?: number }).code ?? 1) : 0),
    );
  });
}

describe('the Dockerfile health check', () => {
  let live: Server;
  let port: number;
  let dir: string;
  before(async () => {
    // The service's liveness route, and nothing else.
    live = createServer((req, res) => res.writeHead(req.url === '/health/live' ? 200 : 404).end());
    await new Promise<void>((resolve) => live.listen(0, '127.0.0.1', resolve));
    port = (live.address() as AddressInfo).port;
    dir = mkdtempSync(join(tmpdir(), 'sessionary-healthcheck-'));
  });
  after(() => {
    live.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('finds the service at the PORT of the environment, and fails where nothing listens', async () => {
    assert.equal(await runCheck(dir, { PORT: String(port) }), 0);
    assert.equal(await runCheck(dir, { PORT: String(port), HOST: '0.0.0.0' }), 0, 'all addresses: asked on loopback');
    live.close();
    const closed = await runCheck(dir, { PORT: String(port) });
    await new Promise<void>((resolve) => live.listen(port, '127.0.0.1', resolve));
    assert.equal(closed, 1);
  });

  it('reads PORT and HOST from a .env in the working directory, the environment winning as it does for the service', async () => {
    writeFileSync(join(dir, '.env'), `PORT=${port}\nHOST=::\n`);
    try {
      assert.equal(await runCheck(dir, {}), 0, "the .env's PORT");
      assert.equal(await runCheck(dir, { PORT: '1' }), 1, "the environment's PORT, over the .env's");
    } finally {
      rmSync(join(dir, '.env'));
    }
  });
});
