import { CanActivate, ExecutionContext, Injectable, UnsupportedMediaTypeException } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';

/** What the standalone service's 415 says (AllExceptionsFilter, for Fastify's own refusal). */
export const JSON_ONLY_MESSAGE = 'Unsupported content type; send application/json';

/**
 * API.md: request bodies are application/json, anything else a 415. The standalone service
 * has no other parser (NEST_APP_OPTIONS), so Fastify refuses the rest before any route; a host
 * app made with Nest's defaults (bodyParser on) parses form-encoded bodies too, and Sessionary's
 * routes took them: any web page could make its visitors' browsers post a plain HTML form to
 * the login or the registration (no CORS preflight for a form), guessing passwords and locking
 * accounts from their addresses (until 0.29.0). On Sessionary's routes only: the host's own
 * routes keep whatever bodies the host takes. What has a body is what Fastify parses one for:
 * a GET or HEAD never; another method whenever it names a content type, but for an HTTP/1
 * request that says it has none (Content-Length 0, or neither it nor Transfer-Encoding), as
 * registerRequestHygiene drops the type of such a request; a body without a type is refused
 * when a parser of the host's took it anyway (a catch-all).
 */
@Injectable()
export class JsonBodiesOnlyGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    if (context.getType() !== 'http') return true;
    const request = context.switchToHttp().getRequest<FastifyRequest>();
    if (request.method === 'GET' || request.method === 'HEAD') return true;
    const type = request.headers['content-type'];
    const refused =
      type === undefined ? request.body !== undefined && request.body !== null : mayHaveBody(request) && mediaType(type) !== 'application/json';
    if (refused) throw new UnsupportedMediaTypeException(JSON_ONLY_MESSAGE);
    return true;
  }
}

/** RFC 9112, 6.3: an HTTP/1 request without Content-Length above 0 or Transfer-Encoding has none; HTTP/2 frames may carry one whatever. */
function mayHaveBody({ headers, raw }: FastifyRequest): boolean {
  if (headers['transfer-encoding'] !== undefined) return true;
  const length = headers['content-length'];
  if (length !== undefined) return length !== '0';
  return raw.httpVersionMajor >= 2;
}

/** The type and subtype, lower-cased, without parameters ("application/json; charset=utf-8"). */
function mediaType(contentType: string): string {
  const end = contentType.indexOf(';');
  return (end === -1 ? contentType : contentType.slice(0, end)).trim().toLowerCase();
}
