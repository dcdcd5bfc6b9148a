import { ArgumentsHost, Catch, ExceptionFilter, HttpException, Logger } from '@nestjs/common';
import { STATUS_CODES } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { QueryFailedError } from 'typeorm';
import { PG_UNIQUE_VIOLATION, pgErrorCode } from '../database/pg-errors';
import { RetryAfterException } from './retry-after.exception';

interface ErrorBody {
  statusCode: number;
  error: string;
  message: string | string[];
}

/**
 * The one place that decides an error body. 4xx HttpExceptions keep their status and message;
 * a unique violation that a service did not translate is a 409; errors Fastify raises
 * itself (bad JSON, 413, 415) keep their 4xx with a plain message; anything else is a fixed
 * 500 whose details go only to the log. Nothing from a driver or a stack reaches a client.
 */
@Catch()
export class AllExceptionsFilter implements ExceptionFilter {
  private readonly logger = new Logger(AllExceptionsFilter.name);

  catch(exception: unknown, host: ArgumentsHost): void {
    const http = host.switchToHttp();
    const reply = http.getResponse<FastifyReply>();
    const request = http.getRequest<FastifyRequest>();
    const body = this.toBody(exception, request);
    if (exception instanceof RetryAfterException) void reply.header('Retry-After', String(exception.retryAfterSeconds));
    void reply.status(body.statusCode).header('content-type', 'application/json; charset=utf-8').send(body);
  }

  toBody(exception: unknown, request?: FastifyRequest): ErrorBody {
    if (exception instanceof HttpException) {
      const status = exception.getStatus();
      // A 5xx keeps its status (503 from the readiness check) but never its details.
      if (status >= 500) return this.internalError(exception, request, status);
      const response = exception.getResponse();
      const error = STATUS_CODES[status] ?? 'Error';
      if (typeof response === 'string') return { statusCode: status, error, message: response };
      const r = response as { message?: string | string[]; error?: string };
      return { statusCode: status, error: r.error ?? error, message: r.message ?? error };
    }
    if (exception instanceof QueryFailedError && pgErrorCode(exception) === PG_UNIQUE_VIOLATION) {
      return { statusCode: 409, error: 'Conflict', message: 'Conflict' };
    }
    const fastifyStatus = clientErrorStatus(exception);
    if (fastifyStatus) {
      return { statusCode: fastifyStatus, error: STATUS_CODES[fastifyStatus] ?? 'Error', message: fastifyMessage(exception, fastifyStatus) };
    }
    return this.internalError(exception, request);
  }

  /** Whatever went wrong, the client gets the same body; the details go to the log only. */
  private internalError(exception: unknown, request?: FastifyRequest, status = 500): ErrorBody {
    const route = request ? `${request.method} ${request.routeOptions?.url ?? 'unknown route'}` : 'outside a request';
    if (exception instanceof HttpException) {
      // Raised on purpose (the readiness check's 503): one line, no stack, however often probed.
      this.logger.warn(`${status} on ${route}: ${JSON.stringify(exception.getResponse())}`);
    } else {
      const stack = exception instanceof Error ? exception.stack : String(exception);
      this.logger.error(`Unhandled error on ${route}`, stack);
    }
    if (status !== 500) return { statusCode: status, error: STATUS_CODES[status] ?? 'Error', message: STATUS_CODES[status] ?? 'Error' };
    return { statusCode: 500, error: 'Internal Server Error', message: 'Internal server error' };
  }
}

/** Errors raised by Fastify itself (content-type parser, body limit) carry a 4xx statusCode. */
function clientErrorStatus(exception: unknown): number | undefined {
  const status = (exception as { statusCode?: unknown })?.statusCode;
  return typeof status === 'number' && status >= 400 && status < 500 ? status : undefined;
}

function fastifyMessage(exception: unknown, status: number): string {
  switch ((exception as { code?: string }).code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return 'Body must be valid JSON';
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return 'Request body is too large';
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return 'Unsupported content type; send application/json';
    default:
      return STATUS_CODES[status] ?? 'Bad request';
  }
}
