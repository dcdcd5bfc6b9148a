import { createParamDecorator, ExecutionContext } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';

/** Where a request came from, as recorded on sessions and audit events. */
export interface ClientContext {
  ipAddress: string | null;
  userAgent: string | null;
}

/** The longest address and user agent kept (the columns' lengths; the OpenAPI document states them). */
export const IP_ADDRESS_MAX_LENGTH = 64;
export const USER_AGENT_MAX_LENGTH = 512;

export function clientContextOf(request: FastifyRequest): ClientContext {
  // request.ip honours X-Forwarded-For only when TRUST_PROXY configures Fastify to.
  return boundedClientContext(request.ip, request.headers['user-agent']);
}

/** A client context as the columns keep it, from a request or from a host's own code (AccountsService). */
export function boundedClientContext(ipAddress: unknown, userAgent: unknown): ClientContext {
  return {
    ipAddress: typeof ipAddress === 'string' && ipAddress.length ? ipAddress.slice(0, IP_ADDRESS_MAX_LENGTH) : null,
    userAgent: typeof userAgent === 'string' && userAgent.length ? userAgent.replace(CONTROL_CHARACTERS, '').slice(0, USER_AGENT_MAX_LENGTH) : null,
  };
}

/** Dropped from a user agent, so that it cannot forge lines in logs or exports. */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/g;

export const Client = createParamDecorator((_: unknown, ctx: ExecutionContext): ClientContext =>
  clientContextOf(ctx.switchToHttp().getRequest<FastifyRequest>()),
);

/** The route a request matched, as a refusal records it: its template, never the raw URL (bounded keys, no ids or query strings in the log). */
export function routeOf(request: FastifyRequest): { template: string; method: string } {
  return { template: request.routeOptions?.url ?? 'unmatched', method: request.method };
}
