import { STATUS_CODES } from 'node:http';
import type { OpenAPIObject } from '@nestjs/swagger';
import { CORS_ORIGIN_PATTERN, INT32_MAX } from '../config/env.schema';

const METHODS = ['get', 'put', 'post', 'delete', 'patch'] as const;

// The OpenAPI types of @nestjs/swagger, reached from its exported document type.
type OperationObject = NonNullable<OpenAPIObject['paths'][string]['get']>;
type AnyResponse = NonNullable<OperationObject['responses'][string]>;
type ResponseObject = Exclude<AnyResponse, { $ref: string }>;
type HeaderObject = Exclude<NonNullable<ResponseObject['headers']>[string], { $ref: string }>;
type SchemaObject = Exclude<NonNullable<NonNullable<OpenAPIObject['components']>['schemas']>[string], { $ref: string }>;
const ERROR_SCHEMA = { $ref: '#/components/schemas/ErrorResponseDto' };

/**
 * A count in a response: JavaScript numbers are exact up to 2^53 - 1, so that is the largest
 * a client can be sent, whatever the column holds.
 */
export const COUNT_SCHEMA = { type: 'integer', format: 'int64', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } as const;

/** Tags and what they hold, in the order the Swagger UI shows them. */
export const OPENAPI_TAGS: Array<{ name: string; description: string }> = [
  { name: 'auth', description: 'Register, log in, refresh, log out, and who the bearer is' },
  { name: 'users', description: "The caller's profile and password" },
  { name: 'sessions', description: "The caller's sessions: list them, end one or all others" },
  { name: 'audit', description: "The caller's own security events" },
  { name: 'admin', description: "Admins only: any user's sessions and security events" },
  { name: 'operations', description: 'Liveness, readiness and metrics; outside /api/v1, not rate limited' },
  { name: 'keys', description: 'The public keys that verify access tokens; outside /api/v1, not rate limited' },
];

/** What the document needs to know of the server's fixed limits. */
export interface OpenApiLimits {
  bodyLimitBytes: number;
  /** The per-IP request limit's window, which is also how long an IP over it is refused. */
  rateLimitWindowSeconds: number;
}

/**
 * The longest string each format can be: a UUID's text is 36 characters; a date-time is at most
 * 35 (RFC 3339 with nine fraction digits and an offset, the most the audit filters accept;
 * what the server writes is shorter). Stated wherever the format is, so no DTO has to repeat it.
 */
const FORMAT_MAX_LENGTH: Record<string, number> = { uuid: 36, 'date-time': 35 };

function errorResponse(status: number, description: string, message = description): ResponseObject {
  return {
    description,
    content: { 'application/json': { schema: ERROR_SCHEMA, example: { statusCode: status, error: STATUS_CODES[status], message } } },
  };
}

const int32 = (minimum: number, maximum: number) => ({ type: 'integer' as const, format: 'int32', minimum, maximum });

/**
 * The response headers, described once in components.headers (under their own names; the request
 * limit's Retry-After and the back-off's differ in their range) and referred to by each response.
 */
function sharedHeaders(limits: OpenApiLimits): Record<string, HeaderObject> {
  const window = limits.rateLimitWindowSeconds;
  const limitNote = 'Absent when RATE_LIMIT_PER_MINUTE is 0, and on what Fastify refuses before the route (413, 415, a body that is not JSON).';
  return {
    'X-RateLimit-Limit': {
      description: `Requests allowed per minute to this client IP, all routes together (RATE_LIMIT_PER_MINUTE). ${limitNote}`,
      schema: int32(1, INT32_MAX),
    },
    'X-RateLimit-Remaining': {
      description: `Requests left in the current window; 0 on the limit's own 429. ${limitNote}`,
      schema: int32(0, INT32_MAX),
    },
    'X-RateLimit-Reset': {
      description: `Seconds until the window starts over; on the limit's own 429, until requests are accepted again. ${limitNote}`,
      schema: int32(0, window),
    },
    'Retry-After': { description: 'Seconds until requests from this IP are accepted again', schema: int32(0, window) },
    'Retry-After-Backoff': {
      description: `Seconds to wait: at most ${window} after the per-IP request limit; after failed logins or password checks, the back-off (at most LOGIN_FAILURE_WINDOW); after too many registrations from one IP, the rest of its window (at most REGISTER_WINDOW)`,
      schema: int32(0, INT32_MAX),
    },
    'Access-Control-Allow-Origin': {
      description: "The request's Origin, sent back when CORS_ORIGINS lists it; absent otherwise, and on every answer when CORS_ORIGINS is empty",
      schema: { type: 'string', format: 'uri', pattern: CORS_ORIGIN_PATTERN.source },
    },
  };
}

const ref = (name: string) => ({ $ref: `#/components/headers/${name}` });
const RATE_LIMIT_HEADERS = {
  'X-RateLimit-Limit': ref('X-RateLimit-Limit'),
  'X-RateLimit-Remaining': ref('X-RateLimit-Remaining'),
  'X-RateLimit-Reset': ref('X-RateLimit-Reset'),
};

/**
 * What every route of the API answers besides its own responses, and what the decorators
 * cannot say: written once here rather than on each controller, so a generated client sees
 * the whole contract (API.md). Applied to the document Nest generates from the code.
 * - 413 and 415 on every operation with a body (Fastify refuses them before the route);
 * - 429 with Retry-After on every /api/v1 operation (the per-IP request limit over all routes);
 * - the X-RateLimit-* headers on every answer of an /api/v1 operation (RateLimitGuard sends
 *   them, its own 429 included, and, since 0.24.2, the exception filter on the 413 and 415
 *   Fastify gives before the route, which count too);
 * - Access-Control-Allow-Origin on every answer (@fastify/cors adds it to all of them, for the
 *   origins CORS_ORIGINS lists);
 * - 500, whose body is fixed (AllExceptionsFilter);
 * - request bodies refuse unknown properties (`forbidNonWhitelisted`): additionalProperties false;
 * - `:id` path parameters are UUIDs; UUIDs and date-times have their maximum length;
 * - no empty response description, and each error response's example has its own status.
 */
export function completeOpenApiDocument(document: OpenAPIObject, limits: OpenApiLimits): OpenAPIObject {
  document.components ??= {};
  document.components.headers = { ...document.components.headers, ...sharedHeaders(limits) };
  const requestSchemas = new Set<string>();
  for (const [path, item] of Object.entries(document.paths)) {
    const limited = path.startsWith('/api/v1/');
    for (const method of METHODS) {
      const operation: OperationObject | undefined = item[method];
      if (!operation) continue;
      for (const parameter of operation.parameters ?? []) {
        if ('in' in parameter && parameter.in === 'path' && parameter.name === 'id') parameter.schema = { type: 'string', format: 'uuid' };
      }
      const body = operation.requestBody && 'content' in operation.requestBody ? operation.requestBody.content['application/json'] : undefined;
      const bodyRef = (body?.schema as { $ref?: string } | undefined)?.$ref;
      if (bodyRef) requestSchemas.add(bodyRef.replace('#/components/schemas/', ''));
      if (body) {
        operation.responses['413'] ??= errorResponse(413, `The body is larger than ${limits.bodyLimitBytes / 1024} KiB`);
        operation.responses['415'] ??= errorResponse(415, 'The body is not application/json');
      }
      operation.responses['500'] ??= errorResponse(
        500,
        'An unexpected error; the body is always this one, the details go only to the log',
        'Internal server error',
      );
      if (limited) {
        // A route's own 429 (the failed-password back-off, the registration limit) can last longer than the request limit's.
        const backoff = operation.responses['429'] !== undefined;
        const tooMany = (operation.responses['429'] ??= errorResponse(429, 'Too many requests from this IP; see Retry-After'));
        if (!('$ref' in tooMany)) tooMany.headers = { 'Retry-After': ref(backoff ? 'Retry-After-Backoff' : 'Retry-After'), ...tooMany.headers };
      }
      for (const [status, response] of Object.entries(operation.responses) as Array<[string, AnyResponse]>) {
        if ('$ref' in response) continue;
        const code = Number(status);
        if (limited) response.headers = { ...RATE_LIMIT_HEADERS, ...response.headers };
        response.headers = { ...response.headers, 'Access-Control-Allow-Origin': ref('Access-Control-Allow-Origin') };
        if (!response.description)
          response.description = code < 300 ? (operation.summary ?? STATUS_CODES[code] ?? status) : (STATUS_CODES[code] ?? status);
        const json = response.content?.['application/json'];
        if (code >= 400 && json && (json.schema as { $ref?: string } | undefined)?.$ref === ERROR_SCHEMA.$ref && !json.example) {
          json.example = { statusCode: code, error: STATUS_CODES[code], message: response.description };
        }
      }
    }
  }
  for (const name of requestSchemas) {
    const schema = document.components.schemas?.[name] as SchemaObject | undefined;
    if (schema) schema.additionalProperties = false;
  }
  boundFormattedStrings(document);
  return document;
}

/** Every string schema with a format of FORMAT_MAX_LENGTH, wherever it is, gets that maxLength. */
function boundFormattedStrings(node: unknown, seen = new Set<object>()): void {
  if (typeof node !== 'object' || node === null || seen.has(node)) return;
  seen.add(node);
  const schema = node as { type?: unknown; format?: unknown; maxLength?: number };
  if (schema.type === 'string' && typeof schema.format === 'string' && FORMAT_MAX_LENGTH[schema.format] !== undefined) {
    schema.maxLength ??= FORMAT_MAX_LENGTH[schema.format];
  }
  for (const child of Object.values(node)) boundFormattedStrings(child, seen);
}
