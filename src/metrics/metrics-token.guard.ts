import { createHash, timingSafeEqual } from 'node:crypto';
import { CanActivate, ExecutionContext, Injectable, UnauthorizedException } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import type { OpenAPIObject } from '@nestjs/swagger';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { BEARER_CHALLENGE_HEADER, bearerChallenge } from '../common/bearer-challenge';
import type { AppConfig } from '../config/config';
import { RateLimitGuard } from '../rate-limit/rate-limit.guard';

// The scheme and one token68-like credential, nothing after it (RFC 6750, section 2.1).
const BEARER = /^Bearer ([\x21-\x7e]+)$/i;

/**
 * With METRICS_TOKEN set, /metrics answers only a scraper that sends `Authorization: Bearer
 * <METRICS_TOKEN>` (Prometheus: `authorization: { credentials_file: … }`); anyone else gets the
 * 401 and challenge of RFC 6750. Unset, the route is open as before (protect it at the proxy).
 * The comparison is of SHA-256 digests in constant time, so neither the token's length nor
 * where a guess goes wrong shows in the time of an answer. A wrong token counts on the caller's
 * general request limit (scrapes do not: the route skips it), and once over it the caller gets
 * the 429 instead, so a token cannot be guessed faster than any other route can be called.
 */
@Injectable()
export class MetricsTokenGuard implements CanActivate {
  private readonly expected: Buffer | undefined;

  constructor(
    config: ConfigService<AppConfig, true>,
    private readonly rateLimit: RateLimitGuard,
  ) {
    const token = config.get('METRICS_TOKEN', { infer: true });
    // With metrics off the route answers 404 whoever asks: nothing behind it to protect.
    this.expected = token && config.get('METRICS_ENABLED', { infer: true }) ? digest(token) : undefined;
  }

  canActivate(context: ExecutionContext): boolean {
    if (!this.expected) return true;
    const http = context.switchToHttp();
    const request = http.getRequest<FastifyRequest>();
    const header = request.headers.authorization;
    const presented = typeof header === 'string' ? BEARER.exec(header)?.[1] : undefined;
    if (presented !== undefined && timingSafeEqual(digest(presented), this.expected)) return true;
    const overLimit = this.rateLimit.countUncounted(context);
    if (overLimit) throw overLimit;
    void http.getResponse<FastifyReply>().header('WWW-Authenticate', bearerChallenge(request));
    throw new UnauthorizedException('A valid metrics token is required');
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** The OpenAPI document's /metrics, when METRICS_TOKEN protects it: its own bearer scheme and the 401. */
export function documentMetricsToken(document: OpenAPIObject): void {
  const scrape = document.paths['/metrics']?.get;
  if (!scrape) return;
  document.components = { ...document.components, securitySchemes: { ...document.components?.securitySchemes, metricsToken: METRICS_TOKEN_SCHEME } };
  scrape.security = [{ metricsToken: [] }];
  scrape.responses['401'] = {
    description: 'No `Authorization: Bearer <METRICS_TOKEN>`, or another token',
    headers: { 'WWW-Authenticate': BEARER_CHALLENGE_HEADER },
    content: { 'application/json': { schema: { $ref: '#/components/schemas/ErrorResponseDto' } } },
  };
}

const METRICS_TOKEN_SCHEME = {
  type: 'http',
  scheme: 'bearer',
  description: 'METRICS_TOKEN, as configured on the service (not an access token): required by /metrics when it is set.',
} as const;
