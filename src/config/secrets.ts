import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, linkSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigurationError } from './configuration-error';
import { Env, NodeEnv } from './env.schema';

export interface Secrets {
  JWT_SECRET: string;
  PASSWORD_PEPPER: string;
  /** Keys the audit log's hash chain and its checkpoints (HMAC-SHA-256). */
  AUDIT_HMAC_KEY: string;
  /** Encrypts the signing keys' private parts in the database (AES-256-GCM). */
  KEY_ENCRYPTION_KEY: string;
}

const SECRET_NAMES = ['JWT_SECRET', 'PASSWORD_PEPPER', 'AUDIT_HMAC_KEY', 'KEY_ENCRYPTION_KEY'] as const;
export type SecretName = (typeof SECRET_NAMES)[number];

/** 256 bits: HS256 wants a key at least as long as its output (RFC 7518 §3.2). */
export const MIN_SECRET_BYTES = 32;

// Values seen in tutorials, templates and our own .env.example: long enough, known to everyone.
const WELL_KNOWN_SECRETS = new Set([
  'secret',
  'changeme',
  'change-me',
  'your-secret-key',
  'your_jwt_secret',
  'jwt_secret',
  'supersecret',
  'replace-with-at-least-32-random-bytes-base64',
  'change-me-to-a-long-random-string-of-32-bytes-or-more',
]);

function weakness(name: string, value: string | undefined): string | undefined {
  if (!value) return `${name} is missing`;
  const core = unwrapped(value);
  if (Buffer.byteLength(core, 'utf8') < MIN_SECRET_BYTES) return `${name} is shorter than ${MIN_SECRET_BYTES} bytes`;
  if (WELL_KNOWN_SECRETS.has(core.toLowerCase()) || isPatterned(core)) return `${name} is a well-known or low-entropy value`;
  return undefined;
}

/**
 * A secret as it is judged: without the whitespace and quotes around it. A copy's newline (a
 * Kubernetes secret made with `echo`) or an env file's quotes (docker --env-file keeps them)
 * become part of the value, and let a well-known one, or one equal to another secret, pass the
 * checks as another string (until 0.24.0). The value itself is used as it is, wrapping
 * included: a pepper, a key-encryption key or an audit key that has been in use with it cannot
 * be changed without losing what it protects, so it is not refused for it either.
 */
function unwrapped(value: string): string {
  return value.replace(/^[\s"']+|[\s"']+$/g, '');
}

/**
 * A value typed or pasted by a person rather than drawn at random: fewer than 8 distinct
 * characters, a short unit repeated ("abcdefgh" four times), or a run like "abcdef…" or "9876…"
 * for most of its length. Random values of 32 bytes or more never look like that (in base64,
 * about 3 % of neighbours differ by one; in hex, 1 in 8), while a hex key's 16 symbols pass.
 */
export function isPatterned(value: string): boolean {
  return new Set(value).size < 8 || repeatsOrRuns(value);
}

/** A short unit repeated, or a run like "abcdef…" for most of the value (see isPatterned). */
function repeatsOrRuns(value: string): boolean {
  const chars = [...value];
  const repeatsWithin = (period: number) => chars.every((c, i) => i < period || c === chars[i - period]);
  for (let period = 1; period * 2 <= chars.length; period++) if (repeatsWithin(period)) return true;
  const codes = chars.map((c) => c.codePointAt(0)!);
  const byOne = codes.filter((code, i) => i > 0 && Math.abs(code - codes[i - 1]) === 1).length;
  return byOne * 2 > codes.length - 1;
}

/**
 * Production: every secret must come from configuration and be strong, or the boot stops
 * (ASVS 13.3.1); the four must also all differ, so that one leaked value does not give away
 * another's purpose. Development: generated once and kept under DATA_DIR, so a restart
 * neither logs everyone out nor leaves the audit events written before it unverifiable. Test:
 * generated per process unless given.
 */
export function resolveSecrets(env: Env): Secrets {
  if (env.NODE_ENV === NodeEnv.Production) {
    const problems = SECRET_NAMES.map((name) => weakness(name, env[name])).filter((p): p is string => Boolean(p));
    // Compared unwrapped and without case: values that differ only in those are one secret to whoever reads either.
    if (!problems.length && new Set(SECRET_NAMES.map((name) => unwrapped(env[name]!).toLowerCase())).size < SECRET_NAMES.length) {
      problems.push(`${SECRET_NAMES.join(', ')} must all differ`);
    }
    // Optional, but a scraper's token is kept in more places than the service's own keys: once
    // set, it must be as strong, and reveal none of them.
    if (env.METRICS_TOKEN !== undefined) {
      const weak = weakness('METRICS_TOKEN', env.METRICS_TOKEN);
      if (weak) problems.push(weak);
      else if (SECRET_NAMES.some((name) => unwrapped(env[name] ?? '').toLowerCase() === unwrapped(env.METRICS_TOKEN!).toLowerCase()))
        problems.push(`METRICS_TOKEN must differ from ${SECRET_NAMES.join(', ')}`);
    }
    problems.push(...shipAuthorizationProblems(env));
    if (problems.length) {
      throw new ConfigurationError(
        `Refusing to start in production: ${problems.join('; ')}. ` +
          `Set each secret to at least ${MIN_SECRET_BYTES} random bytes, e.g. \`openssl rand -base64 48\`` +
          `${env.AUDIT_SHIP_AUTHORIZATION === undefined ? '' : ", and AUDIT_SHIP_AUTHORIZATION to the receiver's own token"}.`,
      );
    }
    return Object.fromEntries(SECRET_NAMES.map((name) => [name, env[name]!])) as unknown as Secrets;
  }
  if (SECRET_NAMES.every((name) => env[name])) return Object.fromEntries(SECRET_NAMES.map((name) => [name, env[name]!])) as unknown as Secrets;
  const generated = env.NODE_ENV === NodeEnv.Test ? randomSecrets() : persistedDevelopmentSecrets(env.DATA_DIR);
  return Object.fromEntries(SECRET_NAMES.map((name) => [name, env[name] ?? generated[name]])) as unknown as Secrets;
}

/** The least length production accepts for the credential in AUDIT_SHIP_AUTHORIZATION (a UUID-style token has 36). */
export const MIN_SHIP_CREDENTIAL_BYTES = 16;

/**
 * AUDIT_SHIP_AUTHORIZATION in production: its credential (what follows the scheme, as in
 * `Bearer <token>`) is the receiver's, so its format is not ours to set, but it must not be
 * .env.example's placeholder, a patterned or short value, or one of the service's own secrets,
 * which would hand that secret to the receiver.
 */
function shipAuthorizationProblems(env: Env): string[] {
  if (env.AUDIT_SHIP_AUTHORIZATION === undefined) return [];
  const credential = env.AUDIT_SHIP_AUTHORIZATION.trim().split(/\s+/).at(-1) ?? '';
  const name = 'AUDIT_SHIP_AUTHORIZATION';
  if (Buffer.byteLength(credential, 'utf8') < MIN_SHIP_CREDENTIAL_BYTES)
    return [`${name} holds a credential shorter than ${MIN_SHIP_CREDENTIAL_BYTES} bytes`];
  // Not the distinct-characters rule: a receiver's token may be decimal or a short hex string.
  if (WELL_KNOWN_SECRETS.has(credential.toLowerCase()) || repeatsOrRuns(credential)) return [`${name} holds a well-known or patterned credential`];
  // Compared unwrapped and without case, as the secrets are among themselves: a JWT_SECRET with
  // a copy's newline or an env file's quotes passed as another string (until 0.25.0), and the
  // receiver was sent the service's own secret with every piece.
  const judged = unwrapped(credential).toLowerCase();
  if ([...SECRET_NAMES.map((n) => env[n]), env.METRICS_TOKEN].some((secret) => secret !== undefined && unwrapped(secret).toLowerCase() === judged))
    return [`${name} must not hold ${SECRET_NAMES.join(', ')} or METRICS_TOKEN`];
  return [];
}

/** Raised by loadConfig when a secret a command needs as it was (not a new one) is neither configured nor stored. */
export class MissingSecretError extends Error {
  constructor(readonly secret: SecretName) {
    super(`${secret} is not set`);
  }
}

/**
 * The secret as configured or, outside production, as kept under DATA_DIR by an earlier start;
 * undefined when resolveSecrets would have to make one up. Reads, never writes.
 */
export function existingSecret(env: Env, name: SecretName): string | undefined {
  if (env[name]) return env[name];
  if (env.NODE_ENV === NodeEnv.Production) return undefined;
  const file = join(env.DATA_DIR, 'secrets.json');
  if (!existsSync(file)) return undefined;
  try {
    const stored = JSON.parse(readFileSync(file, 'utf8')) as Partial<Secrets>;
    // As persistedDevelopmentSecrets takes it: a file without these two is replaced whole.
    return (stored.JWT_SECRET && stored.PASSWORD_PEPPER && stored[name]) || undefined;
  } catch {
    return undefined;
  }
}

const randomSecret = () => randomBytes(48).toString('base64');

function randomSecrets(): Secrets {
  return { JWT_SECRET: randomSecret(), PASSWORD_PEPPER: randomSecret(), AUDIT_HMAC_KEY: randomSecret(), KEY_ENCRYPTION_KEY: randomSecret() };
}

/**
 * DATA_DIR/secrets.json, made on the first start. Two first starts at once (the service and a
 * command, two instances on one volume) each made and wrote their own until 0.24.1: the last
 * write won, while the other process ran on with keys nobody else had (its tokens refused,
 * its audit events unverifiable, its sealed signing key unreadable). The file is now created
 * exclusively, whole or not at all: the first one made is everyone's.
 */
function persistedDevelopmentSecrets(dataDir: string): Secrets {
  const file = join(dataDir, 'secrets.json');
  for (let attempt = 1; ; attempt++) {
    const stored = readStoredSecrets(file);
    if (stored?.JWT_SECRET && stored.PASSWORD_PEPPER) {
      if (stored.AUDIT_HMAC_KEY && stored.KEY_ENCRYPTION_KEY) return stored as Secrets;
      // A file from before the audit chain or the key ring: add the missing keys, keep the
      // others (nobody is logged out, no audit event becomes unverifiable).
      const upgraded = {
        ...stored,
        AUDIT_HMAC_KEY: stored.AUDIT_HMAC_KEY || randomSecret(),
        KEY_ENCRYPTION_KEY: stored.KEY_ENCRYPTION_KEY || randomSecret(),
      };
      replaceSecretsFile(file, upgraded);
      return upgraded as Secrets;
    }
    const secrets = randomSecrets();
    if (stored) {
      // Without those two: replaced whole, as before (existingSecret reads it so too).
      replaceSecretsFile(file, secrets);
      return secrets;
    }
    mkdirSync(dataDir, { recursive: true });
    // Taken meanwhile by another process: its secrets, read again above, are everyone's. (Once
    // more at most: a file removed as soon as it appeared would not be one to wait for.)
    if (createSecretsFile(file, secrets) || attempt > 1) return secrets;
  }
}

/** What secrets.json holds, undefined when there is none; a file that cannot be used stops the start. */
function readStoredSecrets(file: string): Partial<Secrets> | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw unusableSecretsFile(file, `cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  let stored: unknown;
  try {
    stored = JSON.parse(text);
  } catch {
    // Never echo the file: a parse error would quote its content, the secrets.
    stored = undefined;
  }
  const fields = stored !== null && typeof stored === 'object' && !Array.isArray(stored) ? (stored as Record<string, unknown>) : undefined;
  if (!fields || SECRET_NAMES.some((name) => fields[name] !== undefined && typeof fields[name] !== 'string')) {
    throw unusableSecretsFile(file, 'is not a JSON object of the secrets');
  }
  return fields as Partial<Secrets>;
}

function unusableSecretsFile(file: string, what: string): ConfigurationError {
  return new ConfigurationError(
    `${file} ${what}. Restore it; failing that, delete it to generate new development secrets: everyone is logged out, ` +
      "and what was stored under the old ones no longer fits them (passwords, signing keys, the audit log's verification), " +
      'so start over with an empty database too (the embedded one is DATA_DIR/pg)',
  );
}

/** Writes `secrets` whole under a temporary name beside `file`, mode 0600, and answers that name. */
function writeTemporary(file: string, secrets: object): string {
  const temporary = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  const fd = openSync(temporary, 'wx', 0o600);
  try {
    writeSync(fd, JSON.stringify(secrets));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return temporary;
}

/** What link() answers on a file system without hard links (vfat, exFAT, some FUSE and SMB mounts). */
const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/**
 * Creates `file` holding `secrets`, never over another: false when it exists (another process
 * made it first). Linked from a complete temporary file, so that nobody reads it half written.
 */
function createSecretsFile(file: string, secrets: Secrets): boolean {
  const temporary = writeTemporary(file, secrets);
  try {
    linkSync(temporary, file);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (!NO_HARD_LINKS.has(code ?? '')) throw error;
  } finally {
    rmSync(temporary, { force: true });
  }
  // A file system without hard links: created exclusively in place (a reader at that very
  // moment could find it still empty, and would stop, saying so).
  try {
    writeFileSync(file, JSON.stringify(secrets), { mode: 0o600, flag: 'wx' });
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
}

/** Replaces `file` whole (a rename: a reader finds the old file or the new one, never a mix). */
function replaceSecretsFile(file: string, secrets: object): void {
  const temporary = writeTemporary(file, secrets);
  try {
    renameSync(temporary, file);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw error;
  }
}
