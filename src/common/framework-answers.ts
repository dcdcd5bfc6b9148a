import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { apiSecurityHeaders } from './security-headers';

/*
 * The answers Fastify and Node write themselves, before any route or hook runs, in the shape
 * and with the headers of every other answer (Nest's error body, JSON with its charset, the API
 * security headers). Left to themselves they answer without nosniff or a charset, and Fastify's
 * bodies carry an extra `code` and echo the raw path.
 */

const JSON_TYPE = 'application/json; charset=utf-8';

function errorBody(status: number, message: string): string {
  return JSON.stringify({ statusCode: status, error: STATUS_CODES[status], message });
}

/** Header lines of the API set, joined once: a refused socket gets them as raw HTTP. */
const RAW_SECURITY_HEADERS = Object.entries(apiSecurityHeaders())
  .map(([name, value]) => `${name}: ${value}\r\n`)
  .join('');

/**
 * Node's `clientError`: a request that cannot be parsed (malformed request line, headers over
 * the size limit) or that timed out. Same statuses as Fastify's handler (400, 431, 408); the
 * connection is closed afterwards, as Node and Fastify do.
 */
export function clientErrorHandler(error: NodeJS.ErrnoException, socket: Socket): void {
  // A reset connection has nobody left to answer.
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, message] =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'Request headers are too large']
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'The request took too long to arrive']
        : [400, 'Malformed HTTP request'];
  const body = errorBody(status, message);
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n${RAW_SECURITY_HEADERS}` +
        `Content-Type: ${JSON_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(error);
}

const API_HEADERS = apiSecurityHeaders();

/**
 * Fastify's `frameworkErrors`: a URL that does not decode (`/%zz`), a path parameter over the
 * router's length limit. Called before routing, so no hook has set the headers yet. The
 * message names no part of the request.
 */
export function frameworkErrors(error: FastifyError, _request: FastifyRequest, reply: FastifyReply): void {
  const [status, message] = error.code === 'FST_ERR_MAX_PARAM_LENGTH' ? [414, 'A path parameter is too long'] : [400, 'Malformed URL'];
  void reply.code(status).headers(API_HEADERS).type(JSON_TYPE).send(errorBody(status, message));
}
