import { STATUS_CODES } from 'node:http';
import type { OpenAPIObject } from '@nestjs/swagger';

const METHODS = ['get', 'put', 'post', 'delete', 'patch'] as const;

// The OpenAPI types of @nestjs/swagger, reached from its exported document type.
type OperationObject = NonNullable<OpenAPIObject['paths'][string]['get']>;
type AnyResponse = NonNullable<OperationObject['responses'][string]>;
type ResponseObject = Exclude<AnyResponse, { $ref: string }>;
type SchemaObject = Exclude<NonNullable<NonNullable<OpenAPIObject['components']>['schemas']>[string], { $ref: string }>;
const ERROR_SCHEMA = { $ref: '#/components/schemas/ErrorResponseDto' };

/** Tags and what they hold, in the order the Swagger UI shows them. */
export const OPENAPI_TAGS: Array<{ name: string; description: string }> = [
  { name: 'auth', description: 'Register, log in, refresh, log out, and who the bearer is' },
  { name: 'users', description: "The caller's profile and password" },
  { name: 'sessions', description: "The caller's sessions: list them, end one or all others" },
  { name: 'audit', description: "The caller's own security events" },
  { name: 'admin', description: "Admins only: any user's sessions and security events" },
  { name: 'operations', description: 'Liveness, readiness and metrics; outside /api/v1, not rate limited' },
];

function errorResponse(status: number, description: string, headers?: ResponseObject['headers']): ResponseObject {
  return {
    description,
    ...(headers ? { headers } : {}),
    content: { 'application/json': { schema: ERROR_SCHEMA, example: { statusCode: status, error: STATUS_CODES[status], message: description } } },
  };
}

const RETRY_AFTER = { 'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'integer', minimum: 0 } } };
const RATE_LIMIT_HEADERS = {
  'X-RateLimit-Limit': { description: 'Requests allowed per minute to this client IP, all routes together', schema: { type: 'integer' } },
  'X-RateLimit-Remaining': { description: 'Requests left in the current window', schema: { type: 'integer' } },
  'X-RateLimit-Reset': { description: 'Seconds until the window starts over', schema: { type: 'integer' } },
};

/**
 * What every route of the API answers besides its own responses, and what the decorators
 * cannot say: written once here rather than on each controller, so a generated client sees
 * the whole contract (API.md). Applied to the document Nest generates from the code.
 * - 413 and 415 on every operation with a body (Fastify refuses them before the route);
 * - 429 with Retry-After, and the X-RateLimit-* headers of its answers, on every /api/v1
 *   operation (the per-IP request limit over all routes);
 * - request bodies refuse unknown properties (`forbidNonWhitelisted`): additionalProperties false;
 * - `:id` path parameters are UUIDs;
 * - no empty response description, and each error response's example has its own status.
 */
export function completeOpenApiDocument(document: OpenAPIObject, limits: { bodyLimitBytes: number }): OpenAPIObject {
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
      const ref = (body?.schema as { $ref?: string } | undefined)?.$ref;
      if (ref) requestSchemas.add(ref.replace('#/components/schemas/', ''));
      if (body) {
        operation.responses['413'] ??= errorResponse(413, `The body is larger than ${limits.bodyLimitBytes / 1024} KiB`);
        operation.responses['415'] ??= errorResponse(415, 'The body is not application/json');
      }
      if (limited) {
        const tooMany = (operation.responses['429'] ??= errorResponse(429, 'Too many requests from this IP; see Retry-After', RETRY_AFTER));
        // A route's own 429 (the failed-login throttle) sends Retry-After as well.
        if (!('$ref' in tooMany)) tooMany.headers = { ...RETRY_AFTER, ...tooMany.headers };
        for (const [status, response] of Object.entries(operation.responses) as Array<[string, AnyResponse]>) {
          if (!status.startsWith('2') || '$ref' in response) continue;
          response.headers = { ...RATE_LIMIT_HEADERS, ...response.headers };
        }
      }
      for (const [status, response] of Object.entries(operation.responses) as Array<[string, AnyResponse]>) {
        if ('$ref' in response) continue;
        const code = Number(status);
        if (!response.description) response.description = code < 300 ? (operation.summary ?? STATUS_CODES[code] ?? status) : (STATUS_CODES[code] ?? status);
        const json = response.content?.['application/json'];
        if (code >= 400 && json && (json.schema as { $ref?: string } | undefined)?.$ref === ERROR_SCHEMA.$ref && !json.example) {
          json.example = { statusCode: code, error: STATUS_CODES[code], message: response.description };
        }
      }
    }
  }
  for (const name of requestSchemas) {
    const schema = document.components?.schemas?.[name] as SchemaObject | undefined;
    if (schema) schema.additionalProperties = false;
  }
  return document;
}
