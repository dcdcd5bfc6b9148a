import { ConsoleLogger, LogLevel } from '@nestjs/common';
import type { Env } from './env.schema';

const ORDER: LogLevel[] = ['fatal', 'error', 'warn', 'log', 'debug', 'verbose'];

// Keys whose values never reach a log, at any depth of a logged object (ASVS 16.2.5).
const SECRET_KEYS = [
  'password',
  'currentPassword',
  'newPassword',
  'passwordHash',
  'password_hash',
  'accessToken',
  'refreshToken',
  'refresh_token_hash',
  'tokenHash',
  'token',
  'authorization',
  'cookie',
  'secret',
  'JWT_SECRET',
  'PASSWORD_PEPPER',
  'DATABASE_URL',
];

// Shapes of secrets inside free text, for what a key-based mask cannot see.
const SECRET_PATTERNS: Array<[RegExp, string]> = [
  [/\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/g, '[REDACTED_JWT]'],
  [/\b(Bearer|Basic)\s+[^\s"',]+/gi, '$1 [REDACTED]'],
  [/\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{53}/g, '[REDACTED_HASH]'],
  [/\b[0-9a-f]{64}\b/gi, '[REDACTED_HEX]'],
  [/(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])/g, '[REDACTED_TOKEN]'],
  [/(postgres(?:ql)?:\/\/[^:/\s]+:)[^@\s]+@/gi, '$1***@'],
  [/("?(?:password|currentPassword|newPassword|refreshToken|accessToken|secret)"?\s*[:=]\s*)("[^"]*"|[^\s,}]+)/gi, '$1"[REDACTED]"'],
];

/** Masks secrets in free text; what matches a secret's shape is masked even if it was not one. */
export function scrubSecrets(text: string): string {
  return SECRET_PATTERNS.reduce((out, [pattern, replacement]) => out.replace(pattern, replacement), text);
}

/** Line breaks and other control characters would let a user agent or username forge log lines. */
export function neutraliseControlCharacters(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * Nest's ConsoleLogger with two guarantees on every line: no secret (masked by key in logged
 * objects, by shape in text and stack traces), and one event per line (JSON, or text with
 * control characters escaped).
 */
export class AppLogger extends ConsoleLogger {
  protected override printMessages(
    messages: unknown[],
    context?: string,
    logLevel?: LogLevel,
    writeStreamType?: 'stdout' | 'stderr',
    errorStack?: unknown,
    params?: Record<string, unknown>,
  ): void {
    const text = this.options.json ? scrubSecrets : (s: string) => neutraliseControlCharacters(scrubSecrets(s));
    super.printMessages(
      messages.map((m) => (typeof m === 'string' ? text(m) : m)),
      context,
      logLevel,
      writeStreamType,
      typeof errorStack === 'string' ? scrubSecrets(errorStack) : errorStack,
      params,
    );
  }
}

/** JSON lines by default (one event a line, for log pipelines); `LOG_FORMAT=text` for people. */
export function createLogger(env: Pick<Env, 'LOG_LEVEL' | 'LOG_FORMAT'>): AppLogger {
  const json = env.LOG_FORMAT === 'json';
  return new AppLogger({
    logLevels: ORDER.slice(0, ORDER.indexOf(env.LOG_LEVEL) + 1),
    json,
    colors: !json && process.stdout.isTTY,
    redact: SECRET_KEYS,
  });
}
