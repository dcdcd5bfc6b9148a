import { LoggerService } from '@nestjs/common';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import { clientErrorHandler, frameworkErrors } from './common/framework-answers';
import { completeOpenApiDocument, OPENAPI_TAGS } from './common/openapi-completion';
import { registerRequestHygiene } from './common/request-hygiene';
import { registerSecurityHeaders } from './common/security-headers';
import { requireFastify } from './common/require-fastify';
import { documentServiceUnavailable } from './common/service-unavailable.swagger';
import type { AppConfig } from './config/config';
import { docsEnabled, parseCorsOrigins, parseTrustProxy } from './config/env.schema';
import { watchTrustedHops } from './config/trust-proxy-hops';
import { documentMetricsToken } from './metrics/metrics-token.guard';
import { RATE_LIMIT_WINDOW_SECONDS } from './rate-limit/rate-limit.module';
import { SHUTDOWN_SIGNALS } from './common/shutdown-signals';

/** Where the Swagger UI lives (and its document, at `docs-json`). */
export const DOCS_PATH = 'docs';

/** API.md: request bodies over 16 KiB are refused with 413. */
export const BODY_LIMIT_BYTES = 16 * 1024;

/**
 * Nest's own body parsers off: Fastify parses application/json itself (with the limits
 * below) and answers 415 to every other content type, form encoding included. abortOnError
 * off: an error while Nest makes the app (a provider's, such as the database's first
 * connection) is thrown to the caller, which says it (main.ts: one line), instead of Nest
 * logging its stack and ending the process itself (until 0.24.1: main.ts's catch never ran).
 */
export const NEST_APP_OPTIONS = { bodyParser: false, abortOnError: false } as const;

export function createFastifyAdapter(config: AppConfig): FastifyAdapter {
  return new FastifyAdapter({
    bodyLimit: BODY_LIMIT_BYTES,
    // X-Forwarded-For is believed only when TRUST_PROXY says which proxies to believe.
    trustProxy: parseTrustProxy(config.TRUST_PROXY).value,
    // Our own logger reports errors; Fastify's request log would duplicate it.
    logger: false,
    // A JSON body with __proto__ or constructor.prototype is refused, not merged.
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    // What Node and Fastify answer themselves gets our headers and error shape too.
    clientErrorHandler,
    frameworkErrors,
  });
}

/** Everything main.ts and the e2e tests must share, so tests exercise the real app. */
export async function configureApp(
  app: NestFastifyApplication,
  config: AppConfig,
  // The logger the app was created with: the access log takes its cheap path when it has one.
  logger?: LoggerService | false,
): Promise<NestFastifyApplication> {
  // Before anything here reaches for Fastify's hooks: a host on another adapter hears why.
  requireFastify(app.getHttpAdapter());
  // Security headers, resolved once at boot: OWASP's REST set on the JSON answers, helmet 8's
  // full set on the Swagger UI's pages (src/common/security-headers.ts).
  registerSecurityHeaders(app.getHttpAdapter().getInstance(), `/${DOCS_PATH}`);
  const origins = parseCorsOrigins(config.CORS_ORIGINS);
  // Only listed origins get CORS headers. With none listed there is no CORS plugin at all:
  // @fastify/cors with `origin: false` adds nothing either (its preflight route answers 404, as
  // an unknown route does), but it would still run a hook on every request.
  if (origins.length) {
    app.enableCors({
      origin: origins,
      methods: ['GET', 'POST', 'PATCH', 'PUT', 'DELETE'],
      allowedHeaders: ['Authorization', 'Content-Type'],
      // What a browser client paces itself by, and the 401's challenge (a step-up's
      // insufficient_user_authentication and max_age, RFC 9470): readable from script only when exposed.
      exposedHeaders: ['Retry-After', 'X-RateLimit-Limit', 'X-RateLimit-Remaining', 'X-RateLimit-Reset', 'WWW-Authenticate'],
      maxAge: 600,
    });
  }
  registerRequestHygiene(app.getHttpAdapter().getInstance(), logger, config.ACCESS_LOG_PROBES);
  // A hop count higher than the proxies in front shows in the first proxied request: said once.
  watchTrustedHops(app.getHttpAdapter().getInstance(), config.TRUST_PROXY);
  // API.md's routes are under ROUTE_PREFIX by the Sessionary module itself (so in a host app too).
  if (docsEnabled(config)) setUpDocs(app, config);
  app.enableShutdownHooks([...SHUTDOWN_SIGNALS]);
  return app;
}

/** Swagger UI at /docs, the OpenAPI document at /docs-json. */
function setUpDocs(app: NestFastifyApplication, config: AppConfig): void {
  const builder = new DocumentBuilder()
    .setTitle('Sessionary')
    .setDescription('Server-side sessions, rotating refresh tokens and an audit log. Contract: API.md.')
    .setVersion('1')
    .addBearerAuth({
      type: 'http',
      scheme: 'bearer',
      bearerFormat: 'JWT',
      // The words OWASP's jwt-best-practices rule looks for ("RFC8725"), and what backs them (src/auth/jwt.strategy.ts).
      description:
        'The accessToken of /auth/login or /auth/refresh. Handled as RFC8725 (JSON Web Token Best Current Practices) asks: ' +
        "the header's `kid` names a key of the service's own ring and the token is verified only with that key's algorithm " +
        '(ES256 by default, or HS256; `none` and any other are refused, and so is a header that names a key elsewhere), ' +
        'the explicit type `at+jwt` (RFC 9068) is required, and the issuer, audience and expiry are checked; every key is of at least 256 bits. ' +
        'The token is refused as well once its session has ended.',
    });
  for (const tag of OPENAPI_TAGS) builder.addTag(tag.name, tag.description);
  const document = SwaggerModule.createDocument(app, builder.build());
  // The route exists either way (a controller cannot be left out by configuration) but answers 404 when off.
  if (!config.METRICS_ENABLED) delete document.paths['/metrics'];
  else if (config.METRICS_TOKEN) documentMetricsToken(document);
  documentServiceUnavailable(document);
  completeOpenApiDocument(document, { bodyLimitBytes: BODY_LIMIT_BYTES, rateLimitWindowSeconds: RATE_LIMIT_WINDOW_SECONDS });
  SwaggerModule.setup(DOCS_PATH, app, document, {
    jsonDocumentUrl: `${DOCS_PATH}-json`,
    // The token given to Authorize survives a reload of the page (kept in the browser's storage).
    swaggerOptions: { persistAuthorization: true },
  });
}
