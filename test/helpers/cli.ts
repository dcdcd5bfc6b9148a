import { Logger, type LoggerService } from '@nestjs/common';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { runCommand } from '../../src/cli/run-command';
import { TEST_AUDIT_HMAC_KEY, TEST_KEY_ENCRYPTION_KEY } from './test-app';

const CLI = join(__dirname, '..', '..', 'src', 'cli.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * The environment of `npm run cli -- …` on `databaseUrl`, with the keys the test apps use (its
 * audit events join the same chains; it opens the same signing keys). The CLI runs no
 * scheduled job whatever its settings, so none are turned off here.
 */
function cliEnvironment(databaseUrl: string, settings: Record<string, string | undefined>): Record<string, string | undefined> {
  return {
    ...process.env,
    NODE_ENV: 'test',
    DATABASE_URL: databaseUrl,
    AUDIT_HMAC_KEY: TEST_AUDIT_HMAC_KEY,
    KEY_ENCRYPTION_KEY: TEST_KEY_ENCRYPTION_KEY,
    ...settings,
  };
}

/**
 * Runs the command `npm run cli -- <args>` runs (src/cli/run-command.ts), inside this process:
 * its own application on `databaseUrl`, its stdout and stderr captured, its exit code
 * answered. What only the process adds (the exit itself, stdout drained into a pipe, Nest's
 * console format on stderr) is tested through runCliProcess, and that a usage error loads no
 * package by test/cli-startup.spec.ts; running the many other command lines here spares each
 * the second or two a new process spends loading the application.
 */
export async function runCli(databaseUrl: string, ...args: string[]): Promise<CliResult> {
  return runCliWith({}, databaseUrl, ...args);
}

/** runCli with settings of its own over the tests' (undefined: not set at all). */
export async function runCliWith(settings: Record<string, string | undefined>, databaseUrl: string, ...args: string[]): Promise<CliResult> {
  const stdout = new Capture();
  const stderr = new Capture();
  const lines = new LinesLogger(stderr);
  // Nest makes a new application's logger the process's (Logger.overrideLogger): the test's
  // own apps get theirs back when the command is done.
  const previous = (Logger as unknown as { staticInstanceRef?: LoggerService }).staticInstanceRef;
  try {
    const code = await runCommand(args, { stdout, stderr, logger: async () => lines, env: cliEnvironment(databaseUrl, settings) });
    return { code, stdout: stdout.text(), stderr: stderr.text() };
  } finally {
    Logger.overrideLogger(previous ?? false);
  }
}

/** Runs `npm run cli -- <args>` as its own process on `databaseUrl`. A non-zero exit is returned, not thrown. */
export async function runCliProcess(databaseUrl: string, ...args: string[]): Promise<CliResult> {
  return runCliProcessWith({}, databaseUrl, ...args);
}

/** runCliProcess with more settings in the process's environment. */
export async function runCliProcessWith(settings: Record<string, string>, databaseUrl: string, ...args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI, ...args], {
      env: cliEnvironment(databaseUrl, settings),
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** A stream that keeps what is written to it. */
class Capture extends Writable {
  private readonly chunks: Buffer[] = [];

  override _write(chunk: Buffer | string, encoding: BufferEncoding, done: () => void): void {
    this.chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, encoding));
    done();
  }

  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

/** The CLI's levels (fatal, error, warn), one line each, on the given stream. */
class LinesLogger implements LoggerService {
  constructor(private readonly out: Writable) {}

  private line(level: string, message: unknown, params: unknown[]): void {
    this.out.write(
      `${level} ${[message, ...params]
        .filter((p) => p !== undefined)
        .map(String)
        .join(' ')}\n`,
    );
  }

  fatal(message: unknown, ...params: unknown[]): void {
    this.line('FATAL', message, params);
  }

  error(message: unknown, ...params: unknown[]): void {
    this.line('ERROR', message, params);
  }

  warn(message: unknown, ...params: unknown[]): void {
    this.line('WARN', message, params);
  }

  log(): void {}
}
