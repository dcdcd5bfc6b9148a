import { ConsoleLogger, LogLevel } from '@nestjs/common';
import { Env, NodeEnv } from './env.schema';

const ORDER: LogLevel[] = ['fatal', 'error', 'warn', 'log', 'debug', 'verbose'];

/** JSON lines in production (one event a line, for log pipelines), readable text elsewhere. */
export function createLogger(env: Pick<Env, 'LOG_LEVEL' | 'NODE_ENV'>): ConsoleLogger {
  return new ConsoleLogger({
    logLevels: ORDER.slice(0, ORDER.indexOf(env.LOG_LEVEL) + 1),
    json: env.NODE_ENV === NodeEnv.Production,
    colors: env.NODE_ENV !== NodeEnv.Production && process.stdout.isTTY,
  });
}
