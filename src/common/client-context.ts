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
  const ua = request.headers['user-agent'];
  return {
    ipAddress: request.ip ? request.ip.slice(0, IP_ADDRESS_MAX_LENGTH) : null,
    // Control characters are dropped so a user agent cannot forge lines in logs or exports.
    // eslint-disable-next-line no-control-regex -- matching control characters is the point
    userAgent: typeof ua === 'string' && ua.length ? ua.replace(/[\u0000-\u001f\u007f]/g, '').slice(0, USER_AGENT_MAX_LENGTH) : null,
  };
}

export const Client = createParamDecorator((_: unknown, ctx: ExecutionContext): ClientContext =>
  clientContextOf(ctx.switchToHttp().getRequest<FastifyRequest>()),
);

/** The route a request matched, as a refusal records it: its template, never the raw URL (bounded keys, no ids or query strings in the log). */
export function routeOf(request: FastifyRequest): { template: string; method: string } {
  return { template: request.routeOptions?.url ?? 'unmatched', method: request.method };
}
