import { ConsoleLogger, LoggerService, LogLevel } from '@nestjs/common';
import { inspect } from 'node:util';
import type { Env } from './env.schema';
import { type AccessRecord, JsonLogger, type LogDestinations } from './json-logger';
import { neutraliseControlCharacters, redactSecretKeys, scrubSecrets, SECRET_KEYS } from './log-redaction';

export { flushLogs, type AccessRecord } from './json-logger';

/** A logger with a cheap path for the one access line per request. */
export interface AccessLogger {
  access(record: AccessRecord): void;
}

export function isAccessLogger(logger: unknown): logger is AccessLogger {
  return typeof (logger as Partial<AccessLogger> | null)?.access === 'function';
}
export { neutraliseControlCharacters, scrubSecrets } from './log-redaction';

const ORDER: LogLevel[] = ['fatal', 'error', 'warn', 'log', 'debug', 'verbose'];

const scrubText = (s: string): string => neutraliseControlCharacters(scrubSecrets(s));

/**
 * `LOG_FORMAT=text`, for people: Nest's ConsoleLogger with the same masking as the JSON logger
 * (secret keys in logged objects, secret shapes in text and stack traces) and control
 * characters escaped, so one event stays one line, and each line's time in ISO-8601 UTC (Nest
 * prints the host's local time without an offset: lines from hosts in different zones, or
 * across a daylight-saving change, could not be put in order; ASVS 16.2.2). It writes
 * synchronously, as Nest does.
 */
export class AppLogger extends ConsoleLogger implements AccessLogger {
  access(record: AccessRecord): void {
    this.log(record, 'HTTP');
  }

  protected override getTimestamp(): string {
    return new Date().toISOString();
  }

  protected override printMessages(
    messages: unknown[],
    context?: string,
    logLevel?: LogLevel,
    writeStreamType?: 'stdout' | 'stderr',
    errorStack?: unknown,
    params?: Record<string, unknown>,
  ): void {
    super.printMessages(
      // Objects as the JSON logger masks them (secret keys, secret shapes in their strings); an
      // Error as Nest renders it (util.inspect: its message, stack and cause), masked as text:
      // passed on as it was until 0.23.0, its message and stack were printed unmasked.
      messages.map((m) => (typeof m === 'string' ? scrubText(m) : m instanceof Error ? scrubSecrets(inspect(m)) : redactSecretKeys(m))),
      context,
      logLevel,
      writeStreamType,
      typeof errorStack === 'string' ? scrubSecrets(errorStack) : errorStack,
      params,
    );
  }

  /** error() and fatal() print the stack on a line of its own, after the message: masked too (it was not until 0.23.0). */
  protected override printStackTrace(stack: string): void {
    super.printStackTrace(stack && scrubSecrets(stack));
  }
}

/**
 * The CLI's logger: the text logger's masking, on stderr (stdout carries a command's result:
 * audit-export writes NDJSON there), warnings and errors only. A plain ConsoleLogger until 0.23.0.
 */
export class StderrLogger extends AppLogger {
  constructor() {
    super({ logLevels: ['fatal', 'error', 'warn'], json: false, colors: process.stderr.isTTY === true, redact: SECRET_KEYS });
  }

  protected override printMessages(
    messages: unknown[],
    context?: string,
    logLevel?: LogLevel,
    _stream?: 'stdout' | 'stderr',
    errorStack?: unknown,
    params?: Record<string, unknown>,
  ): void {
    super.printMessages(messages, context, logLevel, 'stderr', errorStack, params);
  }
}

/**
 * JSON lines by default (one event a line, for log pipelines), through pino and written off the
 * request path; `LOG_FORMAT=text` for people. `destinations` replaces stdout/stderr of the JSON
 * logger (tests read the lines there).
 */
export function createLogger(env: Pick<Env, 'LOG_LEVEL' | 'LOG_FORMAT'>, destinations?: LogDestinations): LoggerService {
  if (env.LOG_FORMAT === 'json') return new JsonLogger(env.LOG_LEVEL, destinations);
  return new AppLogger({
    logLevels: ORDER.slice(0, ORDER.indexOf(env.LOG_LEVEL) + 1),
    json: false,
    // isTTY is undefined, not false, on a pipe or file, where Nest would then colour by default.
    colors: process.stdout.isTTY === true,
    redact: SECRET_KEYS,
  });
}
