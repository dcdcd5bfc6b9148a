/** What never reaches a log line, whichever logger writes it (ASVS 16.2.5). */

// Keys whose values never reach a log, at any depth of a logged object, compared case-insensitively.
export const SECRET_KEYS = [
  'password',
  'currentPassword',
  'newPassword',
  'passwordHash',
  'password_hash',
  'accessToken',
  'refreshToken',
  'refresh_token_hash',
  'tokenHash',
  'token_hash',
  'refresh_token',
  'access_token',
  'token',
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'secret',
  'pepper',
  'JWT_SECRET',
  'PASSWORD_PEPPER',
  'AUDIT_HMAC_KEY',
  'KEY_ENCRYPTION_KEY',
  'private_key',
  'privateKey',
  'DATABASE_URL',
  'DATABASE_LISTEN_URL',
  'AUDIT_SHIP_AUTHORIZATION',
  'AUDIT_SHIP_URL',
  'METRICS_TOKEN',
];

export const REDACTED = '[REDACTED]';

const SECRET_KEY_SET = new Set(SECRET_KEYS.map((key) => key.toLowerCase()));

/** One of SECRET_KEYS, in any case (an environment variable's name, a logged object's key). */
export function isSecretKey(key: string): boolean {
  return SECRET_KEY_SET.has(key.toLowerCase());
}

/**
 * Keys whose string values are public digests shaped like secrets (64 hex digits, 43
 * base64url characters): an audit checkpoint's MACs and heads' digest, which its log line
 * exists to carry off the host, and a signing key's id (its public key's thumbprint).
 */
const PUBLIC_DIGEST_KEYS = new Set(['digest', 'prevMac', 'mac', 'kid']);

/**
 * A TypeORM migration's name: a class name in letters, then its 13-digit timestamp. One of 43
 * characters has a refresh token's shape (`AuditSealClosedAndOldSessionId1767200000000`), and
 * the start's "Applied …" line and the revert command, whose `--confirm` needs the name, said
 * `[REDACTED_TOKEN]` for it (until 0.27.0). A token (32 random bytes in base64url) ends in 13
 * digits with odds of about 3 in 10¹¹, and starts with 30 letters as well far more rarely.
 */
const MIGRATION_NAME = /^[A-Z][A-Za-z]+\d{13}$/;

// Shapes of secrets inside free text, for what a key-based mask cannot see.
const SECRET_PATTERNS: Array<[RegExp, string | ((match: string) => string)]> = [
  [/\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/g, '[REDACTED_JWT]'],
  [/\b(Bearer|Basic)\s+[^\s"',]+/gi, '$1 [REDACTED]'],
  [/\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{53}/g, '[REDACTED_HASH]'],
  [/\b[0-9a-f]{64}\b/gi, '[REDACTED_HEX]'],
  [/(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])/g, (word) => (MIGRATION_NAME.test(word) ? word : '[REDACTED_TOKEN]')],
  // A URL's password: its userinfo runs to the last '@' before the host, so a password with an
  // '@' of its own is masked whole (until 0.24.1 only up to its first '@': `u:p@ss@host` was
  // logged as `u:***@ss@host`). The '@'s it spans are those with no '/', '?' or '#' between them
  // (a password may hold a '/' before its last '@'); the user name may be empty.
  [/(postgres(?:ql)?:\/\/[^:/\s]*:)[^@\s]*(?:@[^@/?#\s]*)*@/gi, '$1***@'],
  [/("?(?:password|currentPassword|newPassword|refreshToken|accessToken|secret)"?\s*[:=]\s*)("[^"]*"|[^\s,}]+)/gi, '$1"[REDACTED]"'],
];

// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f\u2028\u2029]/g;

/** Masks secrets in free text; what matches a secret's shape is masked even if it was not one. */
export function scrubSecrets(text: string): string {
  let out = text;
  for (const [pattern, replacement] of SECRET_PATTERNS) {
    out = typeof replacement === 'string' ? out.replace(pattern, replacement) : out.replace(pattern, replacement);
  }
  return out;
}

/** Line breaks and other control characters would let a user agent or username forge log lines. */
export function neutraliseControlCharacters(text: string): string {
  return text.replace(CONTROL_CHARACTERS, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function isOpaque(value: object): boolean {
  return value instanceof Date || value instanceof RegExp || value instanceof Promise || ArrayBuffer.isView(value) || value instanceof ArrayBuffer;
}

/**
 * A copy of `value` with the value of every secret key replaced, and secret shapes masked in
 * every string (scrubSecrets) but the public digests', at any depth (objects, arrays, Maps,
 * Sets, errors and their causes). Errors become plain `{name, message, stack}` objects with
 * their text scrubbed, since JSON would otherwise drop their message and stack. Only what lies
 * on the way to a change is copied; the input is never mutated. Whatever cannot be walked (a
 * throwing getter) is masked whole. (Strings inside objects were left as they were until
 * 0.21.0: a token in a nested field, `{ detail: 'Bearer …' }`, reached the log.)
 */
export function redactSecretKeys(value: unknown): unknown {
  const ancestors: object[] = [];
  const visit = (node: unknown, key?: string): unknown => {
    if (typeof node === 'string') return key !== undefined && PUBLIC_DIGEST_KEYS.has(key) ? node : scrubSecrets(node);
    if (typeof node !== 'object' || node === null) return node;
    if (ancestors.includes(node)) return '[Circular]';
    if (isOpaque(node)) return node;
    ancestors.push(node);
    try {
      if (Array.isArray(node)) {
        let copy: unknown[] | undefined;
        for (let i = 0; i < node.length; i++) {
          const out = visit(node[i]);
          if (out !== node[i]) (copy ??= node.slice())[i] = out;
        }
        return copy ?? node;
      }
      if (node instanceof Map) {
        let changed = false;
        const entries = [...node].map(([key, entry]) => {
          const out =
            typeof key === 'string' && SECRET_KEY_SET.has(key.toLowerCase()) ? REDACTED : visit(entry, typeof key === 'string' ? key : undefined);
          changed ||= out !== entry;
          return [key, out] as const;
        });
        return changed ? new Map(entries) : node;
      }
      if (node instanceof Set) {
        const originals = [...node];
        const values = originals.map((entry) => visit(entry));
        return values.some((out, i) => out !== originals[i]) ? new Set(values) : node;
      }
      const source = node as Record<string, unknown>;
      const keys = Object.keys(source);
      let copy: Record<string, unknown> | undefined;
      if (node instanceof Error) {
        copy = { name: node.name, message: scrubSecrets(node.message) };
        if (node.stack) copy.stack = scrubSecrets(node.stack);
        for (const key of ['cause', 'errors']) if (Object.hasOwn(node, key) && !keys.includes(key)) keys.push(key);
      }
      for (const key of keys) {
        const original = source[key];
        const out = SECRET_KEY_SET.has(key.toLowerCase()) ? REDACTED : visit(original, key);
        if (out === original && !copy) continue;
        copy ??= { ...source };
        // defineProperty, because an assignment to "__proto__" would call its setter.
        Object.defineProperty(copy, key, { value: out, enumerable: true, writable: true, configurable: true });
      }
      return copy ?? node;
    } finally {
      ancestors.pop();
    }
  };
  try {
    return visit(value);
  } catch {
    return REDACTED;
  }
}
