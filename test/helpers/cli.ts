import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TEST_AUDIT_HMAC_KEY, TEST_KEY_ENCRYPTION_KEY } from './test-app';

const CLI = join(__dirname, '..', '..', 'src', 'cli.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `npm run cli -- <args>` as its own process on `databaseUrl`, with the keys the test apps
 * use (its audit events join the same chains; it opens the same signing keys). The CLI runs no
 * scheduled job whatever its settings, so none are turned off here. A non-zero exit is
 * returned, not thrown.
 */
export async function runCli(databaseUrl: string, ...args: string[]): Promise<CliResult> {
  return runCliWith({}, databaseUrl, ...args);
}

/** runCli with more settings in the CLI's environment. */
export async function runCliWith(settings: Record<string, string>, databaseUrl: string, ...args: string[]): Promise<CliResult> {
  const env = {
    ...process.env,
    NODE_ENV: 'test',
    DATABASE_URL: databaseUrl,
    AUDIT_HMAC_KEY: TEST_AUDIT_HMAC_KEY,
    KEY_ENCRYPTION_KEY: TEST_KEY_ENCRYPTION_KEY,
    ...settings,
  };
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI, ...args], { env, maxBuffer: 64 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}
