import { NodeEnv, parseTrustProxy } from './env.schema';

/**
 * What to say when production trusts every proxy (`TRUST_PROXY=true`): Fastify then takes the
 * client's address from the leftmost `X-Forwarded-For` entry, which the client writes itself,
 * so every per-IP limit (the request limit, failed logins, registrations) counts whatever
 * address the client names, and naming a user's usual address lifts that user's identifier
 * back-off (the known-client exemption). A hop count or the proxies' addresses believe only the
 * entries the service's own proxies added. Said at boot, once.
 */
export function trustProxyWarning(env: { NODE_ENV: NodeEnv; TRUST_PROXY: string }): string | undefined {
  if (env.NODE_ENV !== NodeEnv.Production) return undefined;
  const trusted = parseTrustProxy(env.TRUST_PROXY).value;
  // A range of prefix 0 (`0.0.0.0/0`, `::/0`) is every address: the same as true, said alike (until 0.25.0 it passed without a word).
  const everyAddress = Array.isArray(trusted) ? trusted.find((entry) => /\/0+$/.test(entry)) : undefined;
  if (everyAddress) {
    return (
      `TRUST_PROXY names ${everyAddress}, every address: like TRUST_PROXY=true it believes every X-Forwarded-For entry, and its ` +
      'leftmost one, which any client can write, becomes the client address. Set TRUST_PROXY to the number of proxies in front of ' +
      'the service (e.g. 1) or to their addresses/CIDRs'
    );
  }
  if (trusted !== true) return undefined;
  return (
    'TRUST_PROXY=true believes every X-Forwarded-For entry, and its leftmost one, which any client can write, becomes the client ' +
    "address: per-IP limits then count whatever address a client names, and naming a user's usual address lifts the back-off on " +
    "that user's login. Set TRUST_PROXY to the number of proxies in front of the service (e.g. 1) or to their addresses/CIDRs"
  );
}
