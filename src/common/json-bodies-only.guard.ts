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
 * routes keep whatever bodies the host takes. A request without a body passes whatever type it
 * names, as registerRequestHygiene lets it.
 */
@Injectable()
export class JsonBodiesOnlyGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    if (context.getType() !== 'http') return true;
    const { headers } = context.switchToHttp().getRequest<FastifyRequest>();
    const type = headers['content-type'];
    if (type === undefined || !hasBody(headers)) return true;
    if (mediaType(type) !== 'application/json') throw new UnsupportedMediaTypeException(JSON_ONLY_MESSAGE);
    return true;
  }
}

/** RFC 9112, 6.3: a body is there when Transfer-Encoding says so or Content-Length is above 0. */
function hasBody(headers: FastifyRequest['headers']): boolean {
  if (headers['transfer-encoding'] !== undefined) return true;
  const length = headers['content-length'];
  return length !== undefined && length !== '0';
}

/** The type and subtype, lower-cased, without parameters ("application/json; charset=utf-8"). */
function mediaType(contentType: string): string {
  const end = contentType.indexOf(';');
  return (end === -1 ? contentType : contentType.slice(0, end)).trim().toLowerCase();
}
