import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { Env, parseEnv } from './env.schema';
import { existingSecret, MissingSecretError, resolveSecrets, type SecretName, Secrets } from './secrets';

/** The validated configuration plus the secrets resolved from it. */
export type AppConfig = Omit<Env, keyof Secrets> & Secrets;

/**
 * The reader of process.env (but for library mode's nodeEnv default, which configFromOptions
 * takes from NODE_ENV). `.env` in the working directory is loaded first when present (real
 * environment variables win), so the server, the CLI and the TypeORM CLI agree.
 */
export function loadConfig(raw: Record<string, string | undefined> = process.env, options: { mustExist?: SecretName } = {}): AppConfig {
  const env = loadSettings(raw);
  // A command that reads what an earlier key wrote (audit-verify --file) must not be given a new one.
  if (options.mustExist && !existingSecret(env, options.mustExist)) throw new MissingSecretError(options.mustExist);
  return Object.assign(env, resolveSecrets(env));
}

/**
 * The settings without the secrets (`.env` read as loadConfig reads it), for what needs none:
 * the migrations (`npm run migration:*`), which a deploy step runs with DATABASE_URL alone.
 * loadConfig resolves the secrets on top: refused in production when one is missing, made up
 * and kept in DATA_DIR in development.
 */
export function loadSettings(raw: Record<string, string | undefined> = process.env): Env {
  if (raw === process.env && existsSync('.env')) process.loadEnvFile('.env');
  const env = parseEnv(raw);
  env.DATA_DIR = resolve(env.DATA_DIR);
  return env;
}

/** Lets the bootstrap hand the embedded server's URL to everything that loads config later. */
export function useDatabaseUrl(url: string): void {
  process.env.DATABASE_URL = url;
}
