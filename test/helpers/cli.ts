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
 * use (its audit events join the same chains; it opens the same signing keys) and no background
 * checkpoints or cleanup. A non-zero exit is returned, not thrown.
 */
export async function runCli(databaseUrl: string, ...args: string[]): Promise<CliResult> {
  const env = {
    ...process.env,
    NODE_ENV: 'test',
    DATABASE_URL: databaseUrl,
    AUDIT_HMAC_KEY: TEST_AUDIT_HMAC_KEY,
    KEY_ENCRYPTION_KEY: TEST_KEY_ENCRYPTION_KEY,
    AUDIT_CHECKPOINT_EVERY: '1000000000',
    AUDIT_CHECKPOINT_INTERVAL: '86400',
    SESSION_CLEANUP_CRON: '0 0 1 1 *',
  };
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI, ...args], { env, maxBuffer: 64 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}
