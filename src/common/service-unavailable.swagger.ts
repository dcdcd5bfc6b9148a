import type { OpenAPIObject } from '@nestjs/swagger';
import { UNAVAILABLE_BODY, UNAVAILABLE_RETRY_AFTER_SECONDS } from './all-exceptions.filter';

/** Routes that answer without the database, so they never give a 503. */
const WITHOUT_DATABASE = new Set(['/health/live', '/metrics', '/.well-known/jwks.json']);

/**
 * Every route that needs PostgreSQL answers 503 + Retry-After while it is unreachable (the
 * exception filter decides that for all of them, and gives every 503 the same body), so the
 * document says so in one place rather than on each controller. A route that describes its
 * own 503 keeps the description, with this body and header (readiness: terminus's
 * `@HealthCheck()` documented its own body, which the filter never sends; until 0.22.0).
 */
export function documentServiceUnavailable(document: OpenAPIObject): OpenAPIObject {
  for (const [path, item] of Object.entries(document.paths)) {
    if (WITHOUT_DATABASE.has(path)) continue;
    for (const method of ['get', 'put', 'post', 'delete', 'patch'] as const) {
      const operation = item[method];
      if (!operation) continue;
      const own = operation.responses['503'];
      const described = own && !('$ref' in own) ? own : undefined;
      operation.responses['503'] = {
        description: described?.description ?? 'The database is unreachable; retry after the given seconds',
        headers: {
          ...described?.headers,
          'Retry-After': {
            description: 'Seconds to wait before retrying (always the same)',
            schema: {
              type: 'integer',
              format: 'int32',
              minimum: UNAVAILABLE_RETRY_AFTER_SECONDS,
              maximum: UNAVAILABLE_RETRY_AFTER_SECONDS,
              example: UNAVAILABLE_RETRY_AFTER_SECONDS,
            },
          },
        },
        content: { 'application/json': { schema: { $ref: '#/components/schemas/ErrorResponseDto' }, example: UNAVAILABLE_BODY } },
      };
    }
  }
  return document;
}
