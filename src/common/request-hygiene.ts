import { BadRequestException, Logger, LoggerService } from '@nestjs/common';
import type { AccessLogProbes } from '../config/env.schema';
import { type AccessRecord, isAccessLogger, scrubSecrets } from '../config/logger';
import type { FastifyInstance } from 'fastify';
import { clientContextOf } from './client-context';
import { AUTH_CONTEXT_KEY, AuthContext } from './current-auth.decorator';
import { isProbeRoute } from './probe-route.decorator';

/** Our DTOs are flat; anything deeper than this is not a request we serve. */
export const MAX_JSON_DEPTH = 8;

/**
 * Nesting depth of a parsed JSON value, and whether every string in it (keys included) is
 * well-formed Unicode; iteratively, so a deep value cannot exhaust the stack. Stops early
 * once the depth is over the limit.
 */
export function inspectJson(value: unknown): { depth: number; wellFormed: boolean } {
  let depth = 0;
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length) {
    const [node, level] = stack.pop()!;
    if (typeof node === 'string') {
      if (!node.isWellFormed()) return { depth, wellFormed: false };
      continue;
    }
    if (node === null || typeof node !== 'object') continue;
    depth = Math.max(depth, level + 1);
    if (depth > MAX_JSON_DEPTH) return { depth, wellFormed: true };
    for (const [key, child] of Object.entries(node)) {
      if (!key.isWellFormed()) return { depth, wellFormed: false };
      stack.push([child, level + 1]);
    }
  }
  return { depth, wellFormed: true };
}

export function jsonDepth(value: unknown): number {
  return inspectJson(value).depth;
}

/**
 * Fastify settings every instance needs: JSON as the only body type, refuse over-deep JSON and
 * malformed Unicode before validation (class-transformer
 * recurses), and one structured access-log line per request, naming the route template (never
 * the raw URL, which could carry a token) and never a header value but the user agent, escaped.
 * Probes and scrapes (ProbeRoute) answered below 400 get none with `probes: 'failures'`: a load
 * balancer's health checks and Prometheus's scrapes come every few seconds to every instance and
 * would bury the clients' requests, while a probe that fails still gets its line.
 */
export function registerRequestHygiene(fastify: FastifyInstance, logger: LoggerService | false | undefined, probes: AccessLogProbes): void {
  // JSON only (API.md): Fastify also parses text/plain by default; without a parser it is a 415.
  fastify.removeContentTypeParser('text/plain');

  // Zero bytes of content (Content-Length 0, or neither it nor Transfer-Encoding: RFC 9112, 6.3)
  // are no content, whatever type they say they are: clients that set `Content-Type:
  // application/json` on every request (Python's requests with a session's headers, generated
  // SDKs) send it on a DELETE without a body, which Fastify refused as an empty JSON body (400),
  // so their logout or revocation failed (until 0.24.2).
  fastify.addHook('onRequest', (request, _reply, done) => {
    const { headers } = request;
    if (
      headers['content-type'] !== undefined &&
      headers['transfer-encoding'] === undefined &&
      (headers['content-length'] === undefined || headers['content-length'] === '0')
    ) {
      delete headers['content-type'];
    }
    done();
  });

  // Callback-style hooks: an async hook costs every request a promise and a microtask.
  fastify.addHook('preValidation', (request, _reply, done) => {
    if (request.body === undefined) return done();
    const { depth, wellFormed } = inspectJson(request.body);
    if (depth > MAX_JSON_DEPTH) return done(new BadRequestException(`JSON nesting deeper than ${MAX_JSON_DEPTH} levels`));
    // A lone surrogate ("\ud800") is valid JSON but no text: it would turn into U+FFFD on the
    // way to bcrypt or PostgreSQL, so two different inputs would become one.
    if (!wellFormed) return done(new BadRequestException('JSON strings must be well-formed Unicode'));
    done();
  });

  // Through the app's logger directly when it has the cheap access path; Nest's facade otherwise.
  const facade = new Logger('HTTP');
  const writeAccess = isAccessLogger(logger) ? (record: AccessRecord) => logger.access(record) : (record: AccessRecord) => facade.log(record);
  const skipProbeSuccesses = probes === 'failures';
  fastify.addHook('onResponse', (request, reply, done) => {
    if (skipProbeSuccesses && reply.statusCode < 400 && isProbeRoute(request.routeOptions?.config)) return done();
    const { ipAddress, userAgent } = clientContextOf(request);
    const auth = (request as unknown as Record<string, AuthContext | undefined>)[AUTH_CONTEXT_KEY];
    writeAccess({
      event: 'request',
      requestId: request.id,
      method: request.method,
      route: request.routeOptions?.url ?? 'unmatched',
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime),
      ip: ipAddress,
      userAgent: userAgent === null ? null : scrubbedUserAgent(userAgent),
      // Who, when the session guard let the request in (ASVS 16.2.1).
      userId: auth?.userId ?? null,
      sessionId: auth?.sessionId ?? null,
    });
    done();
  });
}

// Clients send the same few user agents over and over: scrub each once (a bounded memo).
const SCRUBBED_USER_AGENTS = new Map<string, string>();
const MAX_REMEMBERED_USER_AGENTS = 1000;

/** The user agent with anything shaped like a secret masked (a token pasted into it, say). */
export function scrubbedUserAgent(userAgent: string): string {
  let scrubbed = SCRUBBED_USER_AGENTS.get(userAgent);
  if (scrubbed === undefined) {
    scrubbed = scrubSecrets(userAgent);
    if (SCRUBBED_USER_AGENTS.size >= MAX_REMEMBERED_USER_AGENTS) SCRUBBED_USER_AGENTS.clear();
    SCRUBBED_USER_AGENTS.set(userAgent, scrubbed);
  }
  return scrubbed;
}
