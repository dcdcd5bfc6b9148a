import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { findFreePort } from '../../src/database/embedded-postgres';
import { sleep } from './factories';

const MAIN = join(__dirname, '..', '..', 'src', 'main.js');

/**
 * One deployment's settings for ServiceProcess.start: instances given the same object share
 * their secrets (fresh ones per call), on `databaseUrl`, with a cheap bcrypt and warnings only.
 */
export function deploymentEnv(databaseUrl: string, overrides: Record<string, string> = {}): Record<string, string> {
  const secret = () => randomBytes(48).toString('base64');
  return {
    NODE_ENV: 'test',
    DATABASE_URL: databaseUrl,
    JWT_SECRET: secret(),
    PASSWORD_PEPPER: secret(),
    KEY_ENCRYPTION_KEY: secret(),
    BCRYPT_COST: '4',
    LOG_LEVEL: 'warn',
    ...overrides,
  };
}

/**
 * The built service (`dist/src/main.js`, what `npm start` runs) as a child process on
 * 127.0.0.1, for tests that need several real instances on one database.
 */
export class ServiceProcess {
  private output = '';

  private constructor(
    readonly child: ChildProcess,
    readonly url: string,
  ) {
    child.stdout?.on('data', (chunk: Buffer) => (this.output += chunk.toString('utf8')));
    child.stderr?.on('data', (chunk: Buffer) => (this.output += chunk.toString('utf8')));
  }

  /** `cwd`: the working directory (by default the test process's). */
  static async start(env: Record<string, string>, { cwd }: { cwd?: string } = {}): Promise<ServiceProcess> {
    const port = await findFreePort();
    const child = spawn(process.execPath, [MAIN], {
      cwd,
      env: { PATH: process.env.PATH ?? '', HOST: '127.0.0.1', PORT: String(port), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new ServiceProcess(child, `http://127.0.0.1:${port}`);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Everything the process printed (its logs), for assertions and failure messages. */
  get logs(): string {
    return this.output;
  }

  async ready(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null) throw new Error(`service exited with ${this.child.exitCode}:\n${this.output}`);
      const ok = await fetch(`${this.url}/health/live`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) return;
      await sleep(100);
    }
    throw new Error(`service did not start within ${timeoutMs} ms:\n${this.output}`);
  }

  // The tests read whatever JSON the service answered.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  request(path: string, init: { method?: string; token?: string; body?: unknown } = {}): Promise<{ status: number; body: any; headers: Headers }> {
    return fetch(`${this.url}${path}`, {
      method: init.method ?? 'GET',
      headers: {
        ...(init.token ? { authorization: `Bearer ${init.token}` } : {}),
        ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      body: init.body !== undefined ? JSON.stringify(init.body) : undefined,
    }).then(async (r) => {
      const text = await r.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {
        // not JSON (metrics)
      }
      return { status: r.status, body, headers: r.headers };
    }, this.explainFailure.bind(this));
  }

  /** A request that could not connect: if the process has died, says so with what it printed last. */
  private explainFailure(error: unknown): never {
    const ended = this.child.exitCode ?? this.child.signalCode;
    if (ended !== null) throw new Error(`the service exited (${ended}); its last output:\n${this.output.slice(-4000)}`, { cause: error });
    throw error;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

/** The value of one sample of a Prometheus text exposition, e.g. `metric(text, 'x_total{outcome="ran"}')`. */
export function metric(text: string, sample: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${sample} `));
  return line ? Number(line.slice(sample.length + 1)) : NaN;
}
