import type { SecurityHeadersOptions } from '@nestjs/common';
import { resolveSecurityHeaders } from '@nestjs/core/security/security-headers';
import type { FastifyInstance } from 'fastify';

/**
 * Headers for the API's answers, which are JSON and never rendered as a page: OWASP's REST
 * Security Cheat Sheet set. The CSP forbids every resource and any framing; HSTS, nosniff,
 * no referrer, DENY for older browsers that ignore frame-ancestors, same-origin resources.
 * Helmet's page-only headers (X-XSS-Protection, X-Download-Options, Origin-Agent-Cluster,
 * X-DNS-Prefetch-Control, X-Permitted-Cross-Domain-Policies, Cross-Origin-Opener-Policy) mean
 * nothing for a JSON body, and every header is parsed and validated by Node on every answer.
 */
export const API_SECURITY_HEADERS: SecurityHeadersOptions = {
  contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: [`'none'`], frameAncestors: [`'none'`] } },
  crossOriginOpenerPolicy: false,
  crossOriginResourcePolicy: { policy: 'same-origin' },
  originAgentCluster: false,
  referrerPolicy: { policy: 'no-referrer' },
  strictTransportSecurity: { maxAge: 31_536_000, includeSubDomains: true },
  xContentTypeOptions: true,
  xDnsPrefetchControl: false,
  xDownloadOptions: false,
  xFrameOptions: { action: 'deny' },
  xPermittedCrossDomainPolicies: false,
  xXssProtection: false,
};

/**
 * Headers for the Swagger UI pages under /docs: helmet 8's full set and defaults, with a CSP
 * that admits the UI's own inline scripts and styles. `upgrade-insecure-requests` and
 * Cross-Origin-Opener-Policy only when the page itself came over HTTPS: on a plain-HTTP page (a container reached by its address, say)
 * it would send every asset to an https:// URL nobody serves, and the page would stay blank.
 */
export function pageSecurityHeaders(secure: boolean): SecurityHeadersOptions {
  return {
    contentSecurityPolicy: {
      directives: {
        defaultSrc: [`'self'`],
        scriptSrc: [`'self'`, `'unsafe-inline'`],
        styleSrc: [`'self'`, `'unsafe-inline'`],
        imgSrc: [`'self'`, 'data:'],
        frameAncestors: [`'none'`],
        upgradeInsecureRequests: secure ? [] : null,
      },
    },
    // Browsers ignore COOP from an origin that is not potentially trustworthy, and say so in
    // the console on every page; on plain HTTP it protects nothing.
    crossOriginOpenerPolicy: secure,
    crossOriginResourcePolicy: { policy: 'same-origin' },
  };
}

/** The API set as header names and values, for answers written without Fastify's hooks. */
export function apiSecurityHeaders(): Readonly<Record<string, string>> {
  // No answer of the API is for a cache to keep (OWASP's REST set; ASVS 14.3.2): a profile,
  // sessions with their addresses, audit events would otherwise stay in a shared browser's
  // cache (until 0.24.2 only the token answers and the export said so). A route whose answer
  // may be kept says so itself, after this hook (the JWKS's max-age).
  return { ...headersOf(API_SECURITY_HEADERS), 'Cache-Control': 'no-store' };
}

function headersOf(options: SecurityHeadersOptions): Record<string, string> {
  const { headers, removeHeaders } = resolveSecurityHeaders(options);
  // Nest would remove X-Powered-By, which Fastify never sends; anything else needs handling here.
  const unexpected = removeHeaders.filter((name) => name.toLowerCase() !== 'x-powered-by');
  if (unexpected.length) throw new Error(`security headers to remove are not supported: ${unexpected.join(', ')}`);
  return Object.fromEntries(headers);
}

/**
 * Sets the security headers of every answer, resolved and validated once at boot by the
 * function behind Nest's `app.useSecurityHeaders()`: the page set under `pagePrefix`, the API
 * set everywhere else (404s included). They go on Fastify's reply, not on the Node response
 * as Nest's hook does: there they are written with the rest in one `writeHead`, where
 * `setHeader` on the raw response sends every answer down Node's slower header path. An
 * `onRequest` hook runs before the body is read, so refused bodies and errors carry them too.
 */
export function registerSecurityHeaders(fastify: FastifyInstance, pagePrefix: string): void {
  const api = apiSecurityHeaders();
  const securePage = headersOf(pageSecurityHeaders(true));
  const plainPage = headersOf(pageSecurityHeaders(false));
  fastify.addHook('onRequest', (request, reply, done) => {
    // The route template, never the raw URL: `/docs/../x` does not get the page set by its spelling.
    if (!isPageRoute(pagePrefix, request.routeOptions.url)) reply.headers(api);
    // HTTPS as Fastify sees it: TLS here, or X-Forwarded-Proto from a proxy TRUST_PROXY believes.
    else reply.headers(request.protocol === 'https' ? securePage : plainPage);
    done();
  });
}

/** `/docs`, its assets under `/docs/` and its document at `/docs-json`; not `/documents`. */
export function isPageRoute(pagePrefix: string, route: string | undefined): boolean {
  return route !== undefined && (route === pagePrefix || route.startsWith(`${pagePrefix}/`) || route.startsWith(`${pagePrefix}-`));
}
