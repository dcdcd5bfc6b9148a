import { createParamDecorator, ExecutionContext } from '@nestjs/common';
import { isIP } from 'node:net';
import type { FastifyRequest } from 'fastify';

/** Where a request came from, as recorded on sessions and audit events. */
export interface ClientContext {
  ipAddress: string | null;
  userAgent: string | null;
}

/** The longest address and user agent kept (the columns' lengths; the OpenAPI document states them). */
export const IP_ADDRESS_MAX_LENGTH = 64;
export const USER_AGENT_MAX_LENGTH = 512;

/**
 * A client address without the port some proxies append to the X-Forwarded-For entry they
 * write (`203.0.113.7:5555`, `[2001:db8::7]:443`: Azure's Application Gateway, for one), which
 * Fastify's `request.ip` hands on as it is. With it, each connection of one client was an
 * address of its own: a fresh count on every per-IP limit (logins, requests, registrations),
 * and known clients never matched (until 0.25.0). Anything else is kept as it is.
 */
export function withoutPort(address: string): string {
  if (isIP(address)) return address;
  const v6 = /^\[([^\]]+)\](?::\d{1,5})?$/.exec(address);
  if (v6 && isIP(v6[1]) === 6) return v6[1];
  const v4 = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(address);
  if (v4 && isIP(v4[1]) === 4) return v4[1];
  return address;
}

export function clientContextOf(request: FastifyRequest): ClientContext {
  // request.ip honours X-Forwarded-For only when TRUST_PROXY configures Fastify to.
  return boundedClientContext(request.ip, request.headers['user-agent']);
}

/** A client context as the columns keep it, from a request or from a host's own code (AccountsService). */
export function boundedClientContext(ipAddress: unknown, userAgent: unknown): ClientContext {
  return {
    ipAddress: typeof ipAddress === 'string' && ipAddress.length ? cutWellFormed(withoutPort(ipAddress), IP_ADDRESS_MAX_LENGTH) : null,
    userAgent:
      typeof userAgent === 'string' && userAgent.length ? cutWellFormed(userAgent.replace(CONTROL_CHARACTERS, ''), USER_AGENT_MAX_LENGTH) : null,
  };
}

/**
 * At most `max` UTF-16 units, never half a surrogate pair, and no lone surrogate (U+FFFD
 * instead, as PostgreSQL would store it): the audit event's HMAC is computed over the string
 * as given, so a string stored otherwise made an intact event verify as altered (until 0.23.0
 * a 512th unit cutting an emoji in two did, from a host's own code).
 */
export function cutWellFormed(text: string, max: number): string {
  let cut = text.length > max ? text.slice(0, max) : text;
  const last = cut.charCodeAt(cut.length - 1);
  if (text.length > max && last >= 0xd800 && last <= 0xdbff) cut = cut.slice(0, -1);
  return cut.toWellFormed();
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
