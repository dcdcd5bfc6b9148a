import { Logger } from '@nestjs/common';
import type { FastifyInstance } from 'fastify';
import { parseTrustProxy } from './env.schema';

/** How many addresses a request's `X-Forwarded-For` names (a header sent twice counts both). */
export function forwardedAddressCount(header: string | string[] | undefined): number {
  if (header === undefined) return 0;
  const values = Array.isArray(header) ? header : [header];
  return values.reduce((count, value) => count + value.split(',').filter((entry) => entry.trim() !== '').length, 0);
}

/**
 * What to say when a request came through fewer proxies than `TRUST_PROXY`'s hop count. Fastify
 * believes that many entries of `X-Forwarded-For`, counted from the service's side; a request
 * with fewer has every entry believed, and its client address is then the leftmost one, which
 * the client may have written itself. So either fewer proxies stand in front than the count
 * says (every client can then name its own address, and with it get a fresh count from each
 * per-IP limit, or pass as another user's known client), or this client reached the service
 * past them. A request with no entry at all is one that came straight to the port (a health
 * probe), whose address is the connection's own, and says nothing either way.
 */
export function hopShortfallWarning(hops: number, forwarded: number): string | undefined {
  if (forwarded === 0 || forwarded >= hops) return undefined;
  return (
    `TRUST_PROXY=${hops} trusts ${hops} proxies, but a request came with ${forwarded} X-Forwarded-For ` +
    `address${forwarded === 1 ? '' : 'es'}: its client address was taken from an entry the client may have written. ` +
    'Either fewer proxies stand in front of the service than TRUST_PROXY says (set it to their number, or to their ' +
    'addresses/CIDRs), or clients can reach the service past them. Said once per process'
  );
}

/**
 * Watches requests for the shortfall above, with a hop count of 2 or more (with 1, only a
 * request with no entry has fewer, and it says nothing), and warns once per process: a
 * misconfiguration shows in the first proxied request, and every request after it would say
 * the same. After the warning the hook is a flag test.
 */
export function watchTrustedHops(fastify: FastifyInstance, trustProxy: string, logger = new Logger('TrustProxy')): void {
  const { hops } = parseTrustProxy(trustProxy);
  if (hops === undefined || hops < 2) return;
  let warned = false;
  fastify.addHook('onRequest', (request, _reply, done) => {
    if (!warned) {
      const warning = hopShortfallWarning(hops, forwardedAddressCount(request.headers['x-forwarded-for']));
      if (warning) {
        warned = true;
        logger.warn(warning);
      }
    }
    done();
  });
}
