import type { LoggerService } from '@nestjs/common';

/** The context of the lines Nest's ExceptionHandler writes (@nestjs/core, errors/exception-handler.js). */
const NEST_EXCEPTION_HANDLER = 'ExceptionHandler';

/**
 * `logger` without the error lines of Nest's ExceptionHandler, for a NestFactory call with
 * `abortOnError: false`. Nest writes each error raised while it makes the application, its
 * stack included, before it throws it to the caller (or, by default, ends the process at once:
 * until 0.24.1 a database that did not exist ended the service with that stack and nothing
 * else); with the option it throws, and the caller says it once (describeFatal: a refused
 * configuration or a failed connection in one line). Everything else goes to `logger` as it is.
 */
export function withoutNestExceptionHandler(logger: LoggerService): LoggerService {
  return new Proxy(logger, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== 'function') return value;
      if (property !== 'error') return value.bind(target);
      return (message: unknown, ...params: unknown[]) => {
        if (params.at(-1) !== NEST_EXCEPTION_HANDLER) (value as LoggerService['error']).call(target, message, ...params);
      };
    },
  });
}
