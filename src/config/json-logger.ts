import type { LoggerService, LogLevel } from '@nestjs/common';
import pino, { type DestinationStream } from 'pino';
import { redactSecretKeys, scrubSecrets } from './log-redaction';

const LEVELS: Record<LogLevel, number> = { fatal: 60, error: 50, warn: 40, log: 30, debug: 20, verbose: 10 };
const ORDER = Object.keys(LEVELS) as LogLevel[];

/** Nest's test for "this string is a stack trace", so `error(message, stack)` reads as it does there. */
const STACK_FORMAT = /^(.)+\n\s+at .+:\d+:\d+/;

export interface LogDestinations {
  /** fatal and error lines */
  stderr: DestinationStream;
  /** the rest */
  stdout: DestinationStream;
}

type Pino = pino.Logger<LogLevel, boolean>;

/** One access-log event: flat, and built only from values that are safe to log as they are. */
export type AccessRecord = Record<string, string | number | null>;

const open = new Set<JsonLogger>();

/**
 * Writes what every logger created here still holds in memory, synchronously: for the moments
 * after which the process may end without an 'exit' event (a re-raised signal). Every line
 * after it is written through at once as well: the shutdown hook that calls it is the root
 * module's, which Nest runs before the other modules' (the key ring's, the rate limit's last
 * sync, the data source's close), so their lines came after the flush and, until 0.27.0, a
 * re-raised signal ended the process with them still in memory.
 */
export function flushLogs(): void {
  for (const logger of open) {
    logger.writeThrough = true;
    logger.flush();
  }
}

/**
 * Nest's LoggerService on pino, writing the same JSON lines as Nest's JSON ConsoleLogger
 * (`{level, timestamp, pid, context, message, stack}`) with the same masking. Lines are handed
 * to an asynchronous destination (sonic-boom), so a request never waits for a write; warnings
 * and errors are flushed before the call returns, and pino flushes the rest when the process
 * exits.
 */
export class JsonLogger implements LoggerService {
  private enabled: Set<LogLevel>;
  private readonly out: Pino;
  private readonly err: Pino;
  /** Access lines of the current turn of the event loop, not yet handed to the destination. */
  private pendingAccess = '';
  /** Set by flushLogs(): each line is flushed as it is written (the process may end any moment). */
  writeThrough = false;

  constructor(
    level: LogLevel,
    private readonly destinations: LogDestinations = {
      // Under load, one write per 4 KiB instead of one per line; at most a second's delay when quiet.
      stdout: pino.destination({ dest: 1, sync: false, minLength: 4096, periodicFlush: 1000 }),
      // Synchronous: warnings and errors are rare and off the request path, and an asynchronous
      // write is handed to a worker thread at once, where a flush cannot reach it (review: an
      // error line written at shutdown could be lost to the re-raised signal; until 0.27.0).
      stderr: pino.destination({ dest: 2, sync: true }),
    },
  ) {
    this.enabled = new Set(ORDER.slice(0, ORDER.indexOf(level) + 1));
    const options: pino.LoggerOptions<LogLevel, boolean> = {
      level: 'verbose',
      customLevels: LEVELS,
      useOnlyCustomLevels: true,
      messageKey: 'message',
      base: { pid: process.pid },
      timestamp: () => `,"timestamp":${Date.now()}`,
      formatters: { level: (label) => ({ level: label }) },
    };
    this.out = pino(options, destinations.stdout);
    this.err = pino(options, destinations.stderr);
    // Access lines of the last turn are not in the destination yet when the process exits; pino's
    // own exit handler flushes the destination, this one hands them over first (flush below).
    if (open.size === 0) process.once('exit', flushLogs);
    open.add(this);
  }

  log(message: unknown, ...params: unknown[]): void {
    this.write('log', message, params);
  }
  error(message: unknown, ...params: unknown[]): void {
    this.write('error', message, params);
  }
  warn(message: unknown, ...params: unknown[]): void {
    this.write('warn', message, params);
  }
  debug(message: unknown, ...params: unknown[]): void {
    this.write('debug', message, params);
  }
  verbose(message: unknown, ...params: unknown[]): void {
    this.write('verbose', message, params);
  }
  fatal(message: unknown, ...params: unknown[]): void {
    this.write('fatal', message, params);
  }

  /**
   * The per-request access line, on the request path's budget: its fields are fixed, none is
   * secret (the caller scrubs the user agent), so it skips the argument parsing, the masking
   * walk and pino's serializer. Lines of one turn of the event loop go to the destination in
   * one write at the end of the turn: sonic-boom measures its whole pending buffer on every
   * write, which made each line cost it about twice what building the line costs.
   */
  access(record: AccessRecord): void {
    if (!this.enabled.has('log')) return;
    // The same line, key order included, as `log(record, 'HTTP')` gives through pino; built by
    // the native JSON.stringify (a flat record of strings, numbers and nulls), which costs a
    // fraction of pino's per-key walk.
    const line = `{"level":"log","timestamp":${Date.now()},"pid":${process.pid},"context":"HTTP","message":${JSON.stringify(record)}}\n`;
    if (this.pendingAccess === '') setImmediate(this.drainAccess);
    this.pendingAccess += line;
    if (this.writeThrough) this.flush();
  }

  /** Hands the turn's access lines to the destination; every other line waits for them, so lines keep their order. */
  private readonly drainAccess = (): void => {
    if (this.pendingAccess === '') return;
    const lines = this.pendingAccess;
    this.pendingAccess = '';
    this.destinations.stdout.write(lines);
  };

  setLogLevels(levels: LogLevel[]): void {
    this.enabled = new Set(levels);
  }

  flush(): void {
    try {
      this.drainAccess();
    } catch {
      // The destination is closed: nothing can be written any more.
    }
    for (const destination of [this.destinations.stdout, this.destinations.stderr]) {
      const flushSync = (destination as { flushSync?: () => void }).flushSync;
      try {
        flushSync?.call(destination);
      } catch {
        // Not open yet, or already closed: nothing of ours is waiting in it.
      }
    }
  }

  private write(level: LogLevel, message: unknown, params: unknown[]): void {
    if (!this.enabled.has(level)) return;
    this.drainAccess();
    const { context, stack, messages, extra } = splitParams(level, message, params);
    const target = LEVELS[level] >= LEVELS.error ? this.err : this.out;
    for (const each of messages) {
      const record: Record<string, unknown> = {};
      if (context) record.context = context;
      if (each instanceof Error) {
        record.message = scrubSecrets(each.message);
        record.stack = scrubSecrets(stack ?? each.stack ?? '');
      } else {
        record.message = typeof each === 'string' ? scrubSecrets(each) : redactSecretKeys(each);
        if (stack) record.stack = scrubSecrets(stack);
      }
      if (extra) record.params = redactSecretKeys(extra);
      target[level](record);
    }
    // What tells of trouble is on its way out before the caller goes on (it may be about to die).
    if (LEVELS[level] >= LEVELS.warn || this.writeThrough) this.flush();
  }
}

/**
 * Nest's conventions for a logger's arguments: a trailing string is the context; for errors, a
 * string after the message is the stack; plain objects after the message are parameters.
 */
function splitParams(
  level: LogLevel,
  message: unknown,
  params: unknown[],
): { context?: string; stack?: string; messages: unknown[]; extra?: Record<string, unknown> } {
  if (!params.length) return { messages: [message] };
  const errorLike = level === 'error' || level === 'fatal';
  if (errorLike && params.length === 1 && (params[0] === undefined || (typeof params[0] === 'string' && STACK_FORMAT.test(params[0])))) {
    return { messages: [message], stack: params[0] as string | undefined };
  }
  let rest = params;
  let context: string | undefined;
  if (typeof rest[rest.length - 1] === 'string') {
    context = rest[rest.length - 1] as string;
    rest = rest.slice(0, -1);
  }
  let stack: string | undefined;
  if (errorLike && rest.length && (typeof rest[rest.length - 1] === 'string' || rest[rest.length - 1] === undefined)) {
    stack = rest[rest.length - 1] as string | undefined;
    rest = rest.slice(0, -1);
  }
  const messages = [message];
  let extra: Record<string, unknown> | undefined;
  for (const param of rest) {
    if (param !== null && typeof param === 'object' && Object.getPrototypeOf(param) === Object.prototype) extra = { ...extra, ...param };
    else messages.push(param);
  }
  return { context, stack, messages, extra };
}
