import type { ArgumentsHost, ExecutionContext } from '@nestjs/common';
import { Observable, throwError } from 'rxjs';

/**
 * Sessionary answers HTTP. A host's microservice meets its global guards, pipe and filter only
 * when the host connects it with `inheritAppConfig: true` (Nest applies none of them
 * otherwise); handlers run through Nest's external context (GraphQL resolvers) always meet them;
 * a WebSocket gateway never does (unless the host puts them on it). There, these give each
 * transport what its own default would.
 */
export function isHttp(context: ArgumentsHost | ExecutionContext): boolean {
  return context.getType() === 'http';
}

/**
 * What SessionGuard throws for a handler of another transport that is not @Public(). Its
 * message is all a client can be shown (a GraphQL client is shown an error's message); what the
 * host's developer needs, the handler's class and method, is its `detail`, which only the log
 * gets (the guard logs it; the filter then says nothing more of it).
 */
export class OtherTransportRefusedError extends Error {
  readonly detail: string;

  constructor(context: ExecutionContext) {
    super('Forbidden');
    this.name = 'OtherTransportRefusedError';
    this.detail =
      `Sessionary's SessionGuard authenticates HTTP requests only, and ${context.getClass().name}.${context.getHandler().name} ` +
      `is a handler of another transport (${context.getType()}) that is not marked @Public(): it was refused. Mark it @Public() ` +
      'and authenticate it by that transport’s own means (a microservice may also be connected without inheritAppConfig)';
  }
}

const isObject = (value: unknown): value is object => typeof value === 'object' && value !== null;

/** RpcException and WsException (of @nestjs/microservices and @nestjs/websockets, which Sessionary does not depend on) by their shape. */
function transportError(exception: unknown): { error: unknown } | undefined {
  const getError = isObject(exception) ? (exception as { getError?: unknown }).getError : undefined;
  return typeof getError === 'function' ? { error: (getError as () => unknown).call(exception) } : undefined;
}

const UNKNOWN = { status: 'error', message: 'Internal server error' } as const;

/**
 * What Nest's own filter for the transport answers (BaseRpcExceptionFilter, BaseWsExceptionFilter):
 * the transport error's own payload, or `Internal server error` with the error reported (the
 * caller logs it, or counts a database outage). Anything else (a GraphQL resolver's) is thrown
 * on, as Nest's default for it does (SessionGuard's refusal: its client sees only `Forbidden`).
 */
export function answerOtherTransport(
  exception: unknown,
  host: ArgumentsHost,
  reportUnknown: (exception: unknown) => void,
): Observable<never> | undefined {
  const type = host.getType();
  if (type !== 'rpc' && type !== 'ws') throw exception;
  const known = transportError(exception);
  // SessionGuard's refusal was logged by the guard.
  if (!known && !(exception instanceof OtherTransportRefusedError)) reportUnknown(exception);
  const payload = known ? (isObject(known.error) ? known.error : { status: 'error', message: known.error }) : UNKNOWN;
  // A message handler's answer is the error its client's observable receives; a gateway's
  // client gets an `exception` event.
  if (type === 'rpc') return throwError(() => payload);
  host.switchToWs().getClient<{ emit?: (event: string, data: unknown) => unknown }>().emit?.('exception', payload);
  return undefined;
}
