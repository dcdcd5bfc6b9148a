import { BadRequestException, Logger } from '@nestjs/common';
import type { FastifyInstance } from 'fastify';
import { clientContextOf } from './client-context';
import { AUTH_CONTEXT_KEY, AuthContext } from './current-auth.decorator';

/** Our DTOs are flat; anything deeper than this is not a request we serve. */
export const MAX_JSON_DEPTH = 8;

/** Nesting depth of a parsed JSON value, iteratively (a deep value must not exhaust the stack). */
export function jsonDepth(value: unknown): number {
  let max = 0;
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length) {
    const [node, depth] = stack.pop()!;
    if (node === null || typeof node !== 'object') continue;
    max = Math.max(max, depth + 1);
    if (max > MAX_JSON_DEPTH) return max;
    for (const child of Object.values(node)) stack.push([child, depth + 1]);
  }
  return max;
}

/**
 * Fastify settings every instance needs: JSON as the only body type, refuse over-deep JSON before validation (class-transformer
 * recurses), and one structured access-log line per request, naming the route template (never
 * the raw URL, which could carry a token) and never a header value but the user agent, escaped.
 */
export function registerRequestHygiene(fastify: FastifyInstance): void {
  // JSON only (API.md): Fastify also parses text/plain by default; without a parser it is a 415.
  fastify.removeContentTypeParser('text/plain');

  fastify.addHook('preValidation', async (request) => {
    if (request.body !== undefined && jsonDepth(request.body) > MAX_JSON_DEPTH) {
      throw new BadRequestException(`JSON nesting deeper than ${MAX_JSON_DEPTH} levels`);
    }
  });

  const logger = new Logger('HTTP');
  fastify.addHook('onResponse', async (request, reply) => {
    const { ipAddress, userAgent } = clientContextOf(request);
    const auth = (request as unknown as Record<string, AuthContext | undefined>)[AUTH_CONTEXT_KEY];
    logger.log({
      event: 'request',
      requestId: request.id,
      method: request.method,
      route: request.routeOptions?.url ?? 'unmatched',
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime),
      ip: ipAddress,
      userAgent,
      // Who, when the session guard let the request in (ASVS 16.2.1).
      userId: auth?.userId ?? null,
      sessionId: auth?.sessionId ?? null,
    });
  });
}
