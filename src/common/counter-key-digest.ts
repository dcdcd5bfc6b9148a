import { createHmac, hkdfSync } from 'node:crypto';

/**
 * The keys of the counters kept in the database (`login_throttle`, `login_known_clients`,
 * `rate_limits`) are HMAC-SHA-256 digests of what they count (client IPs, emails, usernames)
 * under a key derived from PASSWORD_PEPPER, never the values: a plain SHA-256 of an IPv4
 * address is undone by trying all 2^32 of them, and of an email by a list of addresses, while
 * someone with the database but not the pepper can undo neither. Hex, 64 characters.
 */
export type CounterKeyDigest = (text: string) => string;

export function counterKeyDigest(pepper: string): CounterKeyDigest {
  // A key of its own for this use (HKDF, RFC 5869), so that the pepper's other use shares nothing with it.
  const key = Buffer.from(hkdfSync('sha256', pepper, Buffer.alloc(0), 'sessionary counter keys', 32));
  return (text) => createHmac('sha256', key).update(text, 'utf8').digest('hex');
}
