import { ArgumentsHost, Catch, ExceptionFilter, type ExecutionContext, HttpException, HttpStatus, Logger, Optional } from '@nestjs/common';
import { STATUS_CODES } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Observable } from 'rxjs';
import { QueryFailedError } from 'typeorm';
import { DatabaseOutageMonitor, summarize } from '../database/database-outage.monitor';
import { databaseBusyCode, isDatabaseUnavailable, PG_UNIQUE_VIOLATION, pgErrorCode } from '../database/pg-errors';
import { RefusedRequestsTally, refusalOfStatus } from '../audit/refused-requests-tally';
import { RateLimitGuard } from '../rate-limit/rate-limit.guard';
import { BEARER_CHALLENGES } from './bearer-challenge';
import { clientContextOf } from './client-context';
import { SessionNotActiveException } from './session-not-active.exception';
import { InsufficientUserAuthenticationException } from './insufficient-user-authentication.exception';
import { RetryAfterException } from './retry-after.exception';
import { answerOtherTransport, isHttp } from './other-transports';
import { DatabaseNotReadyException, InstanceShuttingDownException, SigningKeysStaleException } from './database-not-ready.exception';

/** Long enough for a database restart or failover to finish, short enough not to idle clients. */
export const UNAVAILABLE_RETRY_AFTER_SECONDS = 5;
export const UNAVAILABLE_BODY = {
  statusCode: 503,
  error: 'Service Unavailable',
  message: 'The service is temporarily unavailable; retry later',
} as const;

interface ErrorBody {
  statusCode: number;
  error: string;
  message: string | string[];
}

/**
 * The one place that decides an error body. 4xx HttpExceptions keep their status and message;
 * a unique violation that a service did not translate is a 409; an unreachable database
 * (and the readiness check's 503) is a 503 with Retry-After, logged by the outage monitor a
 * few lines per outage rather than a stack per request; a statement the database could not
 * finish now (a timeout, a deadlock, a full disk) is the same 503, one line each; errors Fastify raises itself (bad
 * JSON, 413, 415) keep their 4xx with a plain message; anything else is a fixed 500 whose
 * details go only to the log. Nothing from a driver or a stack reaches a client.
 */
@Catch()
export class AllExceptionsFilter implements ExceptionFilter {
  private readonly logger = new Logger(AllExceptionsFilter.name);

  constructor(
    @Optional() private readonly outage?: DatabaseOutageMonitor,
    /** Counts input refused (400, 413, 415) and rate limits (429) into the audit log's summaries (ASVS 16.3.3). */
    @Optional() private readonly refusals?: RefusedRequestsTally,
    /**
     * Counts the refusals no route's limit counted (an unknown route, a body Fastify refused)
     * on the general limit, and answers 429 instead once the client is over it. Given to the
     * global filter only: those refusals never reach a controller's.
     */
    @Optional() private readonly rateLimit?: RateLimitGuard,
  ) {}

  catch(exception: unknown, host: ArgumentsHost): void | Observable<never> {
    // A host's microservice connected with inheritAppConfig, or a GraphQL resolver: its
    // transport's own answer (until 0.27.0 this took a message for an HTTP request, and its
    // client waited for an answer that never came).
    if (!isHttp(host)) return answerOtherTransport(exception, host, (unknown) => this.reportOtherTransport(unknown, host.getType()));
    const http = host.switchToHttp();
    const reply = http.getResponse<FastifyReply>();
    const request = http.getRequest<FastifyRequest>();
    let body = this.toBody(exception, request);
    const overLimit = isClientError(body.statusCode) ? this.rateLimit?.countUncounted(host as ExecutionContext) : undefined;
    if (overLimit) body = this.toBody(overLimit, request);
    const refusal = this.refusals && refusalOfStatus(body.statusCode);
    if (refusal) this.refusals!.count(clientContextOf(request).ipAddress, refusal);
    if (exception instanceof RetryAfterException) void reply.header('Retry-After', String(exception.retryAfterSeconds));
    else if (body.statusCode === HttpStatus.SERVICE_UNAVAILABLE) void reply.header('Retry-After', String(UNAVAILABLE_RETRY_AFTER_SECONDS));
    // RFC 9470's challenge, and a session found ended after SessionGuard (RFC 6750's invalid_token);
    // SessionGuard writes the other refused tokens' itself. Every
    // other 401 (credentials in the body refused: a password, a refresh token) gets the bare
    // scheme, which names no fault of a token: HTTP (RFC 9110, 15.5.2) and API.md want a
    // challenge on every 401.
    if (exception instanceof InsufficientUserAuthenticationException || exception instanceof SessionNotActiveException) {
      void reply.header('WWW-Authenticate', exception.challenge);
    } else if (body.statusCode === HttpStatus.UNAUTHORIZED && !reply.hasHeader('WWW-Authenticate'))
      void reply.header('WWW-Authenticate', BEARER_CHALLENGES[0]);
    void reply.status(body.statusCode).header('content-type', 'application/json; charset=utf-8').send(body);
  }

  /**
   * An error a host's other transport answers with `Internal server error`, said as the HTTP
   * path says it (review): an outage to the outage monitor (a few lines an outage, not a stack a
   * message), a busy database in one line, anything else with its stack.
   */
  private reportOtherTransport(exception: unknown, type: string): void {
    if (isDatabaseUnavailable(exception)) {
      if (this.outage) this.outage.failed(exception, `a ${type} handler`);
      else this.logger.warn(`Database unavailable in a ${type} handler: ${summarize(exception)}`);
      return;
    }
    const busy = databaseBusyCode(exception);
    if (busy) return this.logger.warn(`Database busy in a ${type} handler (SQLSTATE ${busy}): ${summarize(exception)}`);
    this.logger.error(exception instanceof Error ? exception.message : String(exception), exception instanceof Error ? exception.stack : undefined);
  }

  toBody(exception: unknown, request?: FastifyRequest): ErrorBody {
    if (exception instanceof HttpException) {
      const status = exception.getStatus();
      if (status === HttpStatus.SERVICE_UNAVAILABLE) {
        // The readiness check's 503: the database does not answer its ping.
        if (exception instanceof DatabaseNotReadyException) return this.unavailable(exception, request);
        // Every probe of a drain: the shutdown's start was logged once (HealthController); a
        // stale signing-key ring: each failed read is logged by KeyRing.
        if (exception instanceof InstanceShuttingDownException || exception instanceof SigningKeysStaleException) return { ...UNAVAILABLE_BODY };
        // Raised on purpose elsewhere (an export waiting for the log to settle, a host's route):
        // the same answer, but no outage; until 0.20.2 the monitor took it for one and said so.
        this.logger.warn(`503 on ${routeOf(request)}: ${JSON.stringify(exception.getResponse())}`);
        return { ...UNAVAILABLE_BODY };
      }
      // A 5xx keeps its status (503 from the readiness check) but never its details.
      if (status >= 500) return this.internalError(exception, request, status);
      const response = exception.getResponse();
      const error = STATUS_CODES[status] ?? 'Error';
      if (typeof response === 'string') return { statusCode: status, error, message: response };
      const r = response as { message?: string | string[]; error?: string };
      return { statusCode: status, error: r.error ?? error, message: r.message ?? error };
    }
    if (isDatabaseUnavailable(exception)) return this.unavailable(exception, request);
    const busy = databaseBusyCode(exception);
    if (busy) {
      // The server answers, but could not finish this statement now (see databaseBusyCode):
      // 503 with Retry-After, one line without a stack, and no outage.
      this.logger.warn(`Database busy on ${routeOf(request)} (SQLSTATE ${busy}): ${summarize(exception)}`);
      return { ...UNAVAILABLE_BODY };
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

  private unavailable(exception: unknown, request?: FastifyRequest): ErrorBody {
    const route = routeOf(request);
    // Without the monitor (unit tests build the filter bare): still one line, never a stack.
    if (this.outage) this.outage.failed(exception, route);
    else this.logger.warn(`Database unavailable on ${route}: ${summarize(exception)}`);
    return { ...UNAVAILABLE_BODY };
  }

  /** Whatever went wrong, the client gets the same body; the details go to the log only. */
  private internalError(exception: unknown, request?: FastifyRequest, status = 500): ErrorBody {
    const route = routeOf(request);
    if (exception instanceof HttpException) {
      // Raised on purpose: one line, no stack.
      this.logger.warn(`${status} on ${route}: ${JSON.stringify(exception.getResponse())}`);
    } else {
      const stack = exception instanceof Error ? exception.stack : String(exception);
      this.logger.error(`Unhandled error on ${route}`, stack);
    }
    if (status !== 500) return { statusCode: status, error: STATUS_CODES[status] ?? 'Error', message: STATUS_CODES[status] ?? 'Error' };
    return { statusCode: 500, error: 'Internal Server Error', message: 'Internal server error' };
  }
}

function isClientError(status: number): boolean {
  return status >= 400 && status < 500 && status !== HttpStatus.TOO_MANY_REQUESTS;
}

function routeOf(request?: FastifyRequest): string {
  return request ? `${request.method} ${request.routeOptions?.url ?? 'unknown route'}` : 'outside a request';
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
