import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ConfigurationError } from './configuration-error';
import { parseEnv } from './env.schema';
import { isPatterned, MIN_SECRET_BYTES, resolveSecrets } from './secrets';

const STRONG_JWT = randomBytes(48).toString('base64');
const STRONG_PEPPER = randomBytes(48).toString('base64');
const STRONG_AUDIT_KEY = randomBytes(48).toString('base64');
const STRONG_KEK = randomBytes(48).toString('base64');

/** Production with a strong AUDIT_HMAC_KEY and KEY_ENCRYPTION_KEY unless `vars` names them (undefined: missing). */
function production(vars: Record<string, string | undefined>) {
  return parseEnv({
    NODE_ENV: 'production',
    ...('AUDIT_HMAC_KEY' in vars ? {} : { AUDIT_HMAC_KEY: STRONG_AUDIT_KEY }),
    ...('KEY_ENCRYPTION_KEY' in vars ? {} : { KEY_ENCRYPTION_KEY: STRONG_KEK }),
    ...vars,
  });
}

/** resolveSecrets must stop; the message names `name` and never contains `value`. */
function assertStops(vars: Record<string, string | undefined>, name: string, value: string | undefined, reason: RegExp): void {
  assert.throws(
    () => resolveSecrets(production(vars)),
    (e: unknown) => {
      assert.ok(e instanceof Error);
      assert.match(e.message, /^Refusing to start in production: /);
      assert.match(e.message, new RegExp(`${name} ${reason.source}`));
      if (value) assert.ok(!e.message.includes(value), `the message leaks the value: ${e.message}`);
      // Nor the other, good, secret.
      assert.ok(
        !e.message.includes(STRONG_JWT) &&
          !e.message.includes(STRONG_PEPPER) &&
          !e.message.includes(STRONG_AUDIT_KEY) &&
          !e.message.includes(STRONG_KEK),
      );
      return true;
    },
  );
}

describe('resolveSecrets in production', () => {
  it('returns strong secrets as given', () => {
    assert.deepEqual(resolveSecrets(production({ JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER })), {
      JWT_SECRET: STRONG_JWT,
      PASSWORD_PEPPER: STRONG_PEPPER,
      AUDIT_HMAC_KEY: STRONG_AUDIT_KEY,
      KEY_ENCRYPTION_KEY: STRONG_KEK,
    });
  });

  it('stops on a missing or weak KEY_ENCRYPTION_KEY', () => {
    assertStops(
      { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, KEY_ENCRYPTION_KEY: undefined },
      'KEY_ENCRYPTION_KEY',
      undefined,
      /is missing/,
    );
    const short = STRONG_KEK.slice(0, 20);
    assertStops(
      { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, KEY_ENCRYPTION_KEY: short },
      'KEY_ENCRYPTION_KEY',
      short,
      /is shorter than 32 bytes/,
    );
  });

  it('stops on a KEY_ENCRYPTION_KEY equal to another secret', () => {
    assertStops(
      { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, KEY_ENCRYPTION_KEY: STRONG_PEPPER },
      'AUDIT_HMAC_KEY, KEY_ENCRYPTION_KEY',
      STRONG_PEPPER,
      /must all differ/,
    );
  });

  it('judges a secret without the whitespace and quotes around it: a well-known, short or equal value so wrapped is refused', () => {
    const known = 'change-me-to-a-long-random-string-of-32-bytes-or-more';
    for (const wrapped of [`${known}\n`, `"${known}"`, ` '${known}' `]) {
      assertStops({ JWT_SECRET: wrapped, PASSWORD_PEPPER: STRONG_PEPPER }, 'JWT_SECRET', known, /is a well-known or low-entropy value/);
    }
    const short = STRONG_JWT.slice(0, 20);
    assertStops({ JWT_SECRET: `"${short}"${'\n'.repeat(12)}`, PASSWORD_PEPPER: STRONG_PEPPER }, 'JWT_SECRET', short, /is shorter than 32 bytes/);
    assertStops(
      { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, KEY_ENCRYPTION_KEY: `"${STRONG_JWT}"\n` },
      'AUDIT_HMAC_KEY, KEY_ENCRYPTION_KEY',
      STRONG_JWT,
      /must all differ/,
    );
  });

  it('keeps a strong secret wrapped in whitespace or quotes as it is (a pepper or key in use cannot change without losing what it protects)', () => {
    const wrappedPepper = `${STRONG_PEPPER}\n`;
    const wrappedKek = `"${STRONG_KEK}"`;
    const secrets = resolveSecrets(production({ JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: wrappedPepper, KEY_ENCRYPTION_KEY: wrappedKek }));
    assert.equal(secrets.PASSWORD_PEPPER, wrappedPepper);
    assert.equal(secrets.KEY_ENCRYPTION_KEY, wrappedKek);
  });

  it('stops on two secrets that differ only in case', () => {
    assertStops(
      { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, KEY_ENCRYPTION_KEY: STRONG_JWT.toUpperCase() },
      'AUDIT_HMAC_KEY, KEY_ENCRYPTION_KEY',
      STRONG_JWT,
      /must all differ/,
    );
  });

  it('stops on a missing AUDIT_HMAC_KEY', () => {
    assertStops({ JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, AUDIT_HMAC_KEY: undefined }, 'AUDIT_HMAC_KEY', undefined, /is missing/);
  });

  it('stops on a short or well-known AUDIT_HMAC_KEY', () => {
    const short = STRONG_AUDIT_KEY.slice(0, 20);
    assertStops(
      { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, AUDIT_HMAC_KEY: short },
      'AUDIT_HMAC_KEY',
      short,
      /is shorter than 32 bytes/,
    );
    const known = 'change-me-to-a-long-random-string-of-32-bytes-or-more';
    assertStops(
      { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, AUDIT_HMAC_KEY: known },
      'AUDIT_HMAC_KEY',
      known,
      /is a well-known or low-entropy value/,
    );
  });

  it('stops on a short or well-known METRICS_TOKEN, or one equal to another secret; accepts a strong one or none', () => {
    const strong = { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER };
    const short = randomBytes(16).toString('hex').slice(0, 31);
    assertStops({ ...strong, METRICS_TOKEN: short }, 'METRICS_TOKEN', short, /is shorter than 32 bytes/);
    assertStops({ ...strong, METRICS_TOKEN: 'a'.repeat(40) }, 'METRICS_TOKEN', 'a'.repeat(40), /is a well-known or low-entropy value/);
    assertStops({ ...strong, METRICS_TOKEN: STRONG_AUDIT_KEY }, 'METRICS_TOKEN', STRONG_AUDIT_KEY, /must differ from JWT_SECRET/);
    const token = randomBytes(32).toString('base64url');
    assert.doesNotThrow(() => resolveSecrets(production({ ...strong, METRICS_TOKEN: token })));
    assert.doesNotThrow(() => resolveSecrets(production(strong)));
  });

  it("stops on AUDIT_SHIP_AUTHORIZATION's placeholder, a short, patterned or well-known credential, or one of the service's secrets; accepts a receiver's token", () => {
    const ship = { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, AUDIT_SHIP_URL: 'https://logs.example.com/' };
    const stops = (authorization: string, reason: RegExp) =>
      assertStops({ ...ship, AUDIT_SHIP_AUTHORIZATION: authorization }, 'AUDIT_SHIP_AUTHORIZATION', authorization, reason);
    stops('Bearer change-me', /holds a credential shorter than 16 bytes/);
    stops(`Bearer ${'abcd1234'.repeat(3)}`, /holds a well-known or patterned credential/);
    stops('Bearer your-secret-key', /holds a credential shorter than 16 bytes/);
    stops('Bearer replace-with-at-least-32-random-bytes-base64', /holds a well-known or patterned credential/);
    stops(`Bearer ${STRONG_AUDIT_KEY}`, /must not hold JWT_SECRET, PASSWORD_PEPPER, AUDIT_HMAC_KEY, KEY_ENCRYPTION_KEY or METRICS_TOKEN/);
    // A secret with a copy's newline or an env file's quotes is the same secret (until 0.25.0 it passed as another string).
    assertStops(
      { ...ship, JWT_SECRET: `${STRONG_JWT}\n`, AUDIT_SHIP_AUTHORIZATION: `Bearer ${STRONG_JWT}` },
      'AUDIT_SHIP_AUTHORIZATION',
      STRONG_JWT,
      /must not hold/,
    );
    assertStops(
      { ...ship, PASSWORD_PEPPER: `"${STRONG_PEPPER}"`, AUDIT_SHIP_AUTHORIZATION: `Bearer ${STRONG_PEPPER.toUpperCase()}` },
      'AUDIT_SHIP_AUTHORIZATION',
      STRONG_PEPPER,
      /must not hold/,
    );
    const metricsToken = randomBytes(32).toString('base64url');
    assertStops(
      { ...ship, METRICS_TOKEN: metricsToken, AUDIT_SHIP_AUTHORIZATION: `Bearer ${metricsToken}` },
      'AUDIT_SHIP_AUTHORIZATION',
      metricsToken,
      /must not hold/,
    );
    for (const accepted of [
      // A receiver's token need not look like our secrets: decimal, or short hex with few distinct symbols.
      'Bearer 8302957146620593',
      'Bearer 5a5a51b2b2c3c5aa',
      `Splunk ${randomUUID()}`,
      `Bearer ${randomBytes(32).toString('base64url')}`,
      `Basic ${Buffer.from(`shipper:${randomBytes(12).toString('base64')}`).toString('base64')}`,
    ]) {
      assert.doesNotThrow(() => resolveSecrets(production({ ...ship, AUDIT_SHIP_AUTHORIZATION: accepted })), accepted);
    }
    // Outside production the placeholder is what a developer's receiver may well take.
    assert.doesNotThrow(() => resolveSecrets(parseEnv({ AUDIT_SHIP_URL: 'http://localhost:9000/', AUDIT_SHIP_AUTHORIZATION: 'Bearer change-me' })));
  });

  it('stops on an AUDIT_HMAC_KEY equal to JWT_SECRET', () => {
    assertStops(
      { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, AUDIT_HMAC_KEY: STRONG_JWT },
      'AUDIT_HMAC_KEY, KEY_ENCRYPTION_KEY',
      STRONG_JWT,
      /must all differ/,
    );
  });

  it('accepts exactly 32 bytes of varied characters', () => {
    const secret = STRONG_JWT.slice(0, MIN_SECRET_BYTES);
    assert.equal(resolveSecrets(production({ JWT_SECRET: secret, PASSWORD_PEPPER: STRONG_PEPPER })).JWT_SECRET, secret);
  });

  it('stops on a missing JWT_SECRET', () => {
    assertStops({ PASSWORD_PEPPER: STRONG_PEPPER }, 'JWT_SECRET', undefined, /is missing/);
  });

  it('stops on a blank JWT_SECRET', () => {
    assertStops({ JWT_SECRET: '   ', PASSWORD_PEPPER: STRONG_PEPPER }, 'JWT_SECRET', undefined, /is missing/);
  });

  it('stops on a 31-byte JWT_SECRET', () => {
    const secret = STRONG_JWT.slice(0, 31);
    assert.equal(Buffer.byteLength(secret), 31);
    assertStops({ JWT_SECRET: secret, PASSWORD_PEPPER: STRONG_PEPPER }, 'JWT_SECRET', secret, /is shorter than 32 bytes/);
  });

  it('counts bytes, not characters (16 two-byte characters are 32 bytes)', () => {
    const secret = 'äöüßéèêëàâçîïôûÿ';
    assert.equal(secret.length, 16);
    assert.equal(resolveSecrets(production({ JWT_SECRET: secret, PASSWORD_PEPPER: STRONG_PEPPER })).JWT_SECRET, secret);
  });

  for (const secret of ['change-me-to-a-long-random-string-of-32-bytes-or-more', 'Replace-With-At-Least-32-Random-Bytes-Base64']) {
    it(`stops on the well-known JWT_SECRET ${JSON.stringify(secret)} (case-insensitively)`, () => {
      assertStops({ JWT_SECRET: secret, PASSWORD_PEPPER: STRONG_PEPPER }, 'JWT_SECRET', secret, /is a well-known or low-entropy value/);
    });
  }

  it('stops on a low-entropy JWT_SECRET', () => {
    const secret = 'a'.repeat(40);
    assertStops({ JWT_SECRET: secret, PASSWORD_PEPPER: STRONG_PEPPER }, 'JWT_SECRET', secret, /is a well-known or low-entropy value/);
  });

  for (const secret of [
    'abcdefgh'.repeat(4),
    'Tr0ub4dor&3!'.repeat(3).slice(0, 34),
    'abcdefghijklmnopqrstuvwxyz0123456789',
    'zyxwvutsrqponmlkjihgfedcba9876543210',
  ]) {
    it(`stops on the patterned JWT_SECRET ${JSON.stringify(secret)} (a short unit repeated, or a run)`, () => {
      assertStops({ JWT_SECRET: secret, PASSWORD_PEPPER: STRONG_PEPPER }, 'JWT_SECRET', secret, /is a well-known or low-entropy value/);
    });
  }

  it('accepts random keys in hex, base64 and base64url, however many are drawn', () => {
    for (let i = 0; i < 2000; i++) {
      for (const secret of [
        randomBytes(16).toString('hex'),
        randomBytes(32).toString('hex'),
        randomBytes(24).toString('base64'),
        randomBytes(32).toString('base64url'),
      ]) {
        assert.equal(isPatterned(secret), false, secret);
      }
    }
  });

  it('stops on a missing PASSWORD_PEPPER', () => {
    assertStops({ JWT_SECRET: STRONG_JWT }, 'PASSWORD_PEPPER', undefined, /is missing/);
  });

  it('stops on a weak PASSWORD_PEPPER', () => {
    const pepper = 'abababababababababababababababababab';
    assertStops({ JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: pepper }, 'PASSWORD_PEPPER', pepper, /is a well-known or low-entropy value/);
  });

  it('names both problems when both secrets are bad', () => {
    assert.throws(
      () => resolveSecrets(production({ JWT_SECRET: 'short-secret-value' })),
      (e: unknown) => {
        assert.ok(e instanceof Error);
        assert.match(e.message, /JWT_SECRET is shorter than 32 bytes/);
        assert.match(e.message, /PASSWORD_PEPPER is missing/);
        assert.ok(!e.message.includes('short-secret-value'));
        return true;
      },
    );
  });
});

describe('resolveSecrets in development', () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'sessionary-secrets-'));
  });
  after(() => {
    rmSync(root, { recursive: true, force: true });
  });

  it('generates both secrets, writes DATA_DIR/secrets.json with mode 0600 and returns the same ones next time', () => {
    const dataDir = join(root, 'first', 'nested'); // created on demand
    const env = parseEnv({ NODE_ENV: 'development', DATA_DIR: dataDir });
    const first = resolveSecrets(env);
    assert.ok(Buffer.byteLength(first.JWT_SECRET) >= MIN_SECRET_BYTES);
    assert.ok(Buffer.byteLength(first.PASSWORD_PEPPER) >= MIN_SECRET_BYTES);
    assert.ok(Buffer.byteLength(first.AUDIT_HMAC_KEY) >= MIN_SECRET_BYTES);
    assert.ok(Buffer.byteLength(first.KEY_ENCRYPTION_KEY) >= MIN_SECRET_BYTES);
    assert.notEqual(first.JWT_SECRET, first.PASSWORD_PEPPER);
    assert.notEqual(first.KEY_ENCRYPTION_KEY, first.JWT_SECRET);
    assert.notEqual(first.AUDIT_HMAC_KEY, first.JWT_SECRET);

    const file = join(dataDir, 'secrets.json');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), first);

    const second = resolveSecrets(parseEnv({ NODE_ENV: 'development', DATA_DIR: dataDir }));
    assert.deepEqual(second, first);
  });

  it('prefers secrets given in the environment over the generated ones', () => {
    const dataDir = join(root, 'given');
    const secrets = resolveSecrets(parseEnv({ NODE_ENV: 'development', DATA_DIR: dataDir, JWT_SECRET: STRONG_JWT }));
    assert.equal(secrets.JWT_SECRET, STRONG_JWT);
    const stored = JSON.parse(readFileSync(join(dataDir, 'secrets.json'), 'utf8')) as Record<string, string>;
    assert.equal(secrets.PASSWORD_PEPPER, stored.PASSWORD_PEPPER);
  });

  it('regenerates an incomplete secrets.json', () => {
    const dataDir = join(root, 'incomplete');
    resolveSecrets(parseEnv({ NODE_ENV: 'development', DATA_DIR: dataDir }));
    writeFileSync(join(dataDir, 'secrets.json'), JSON.stringify({ JWT_SECRET: 'only-one' }));
    const secrets = resolveSecrets(parseEnv({ NODE_ENV: 'development', DATA_DIR: dataDir }));
    assert.notEqual(secrets.JWT_SECRET, 'only-one');
    assert.ok(secrets.PASSWORD_PEPPER.length > 0);
    assert.deepEqual(JSON.parse(readFileSync(join(dataDir, 'secrets.json'), 'utf8')), secrets);
  });
});

/**
 * Processes that resolve development secrets in DATA_DIR at the same moment (each waits, spinning,
 * for the same instant after it has loaded everything): what each one got.
 */
async function resolvedTogether(dataDir: string, processes: number): Promise<unknown[]> {
  const at = Date.now() + 1000;
  const source = `
    const { parseEnv } = require(${JSON.stringify(join(__dirname, 'env.schema.js'))});
    const { resolveSecrets } = require(${JSON.stringify(join(__dirname, 'secrets.js'))});
    const env = parseEnv({ NODE_ENV: 'development', DATA_DIR: ${JSON.stringify(dataDir)} });
    while (Date.now() < ${at});
    process.stdout.write(JSON.stringify(resolveSecrets(env)));
  `;
  return Promise.all(
    Array.from({ length: processes }, async () => {
      const { stdout } = await promisify(execFile)(process.execPath, ['-e', source]);
      return JSON.parse(stdout) as unknown;
    }),
  );
}

describe('resolveSecrets in development, several processes at once', () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'sessionary-secrets-race-'));
  });
  after(() => {
    rmSync(root, { recursive: true, force: true });
  });

  // Until 0.24.1 each of them could generate and write its own: the last write won, and the
  // others ran on with secrets nobody else had (tokens refused, audit events unverifiable).
  it('gives every process that makes DATA_DIR/secrets.json the same secrets: the ones in the file', { timeout: 60_000 }, async () => {
    for (let round = 0; round < 5; round++) {
      const dataDir = join(root, `round-${round}`);
      const results = await resolvedTogether(dataDir, 4);
      const stored = JSON.parse(readFileSync(join(dataDir, 'secrets.json'), 'utf8')) as unknown;
      for (const result of results) assert.deepEqual(result, stored, `round ${round}`);
      assert.equal(statSync(join(dataDir, 'secrets.json')).mode & 0o777, 0o600);
      assert.deepEqual(readdirSync(dataDir), ['secrets.json'], 'no temporary file is left');
    }
  });

  it('stops with a ConfigurationError on a secrets.json it cannot use, never quoting it', () => {
    const dataDir = join(root, 'corrupt');
    mkdirSync(dataDir);
    const secret = randomBytes(48).toString('base64');
    for (const content of [`{"JWT_SECRET":"${secret}"`, '', 'null', `["${secret}"]`, `{"JWT_SECRET":1,"PASSWORD_PEPPER":"${secret}"}`]) {
      writeFileSync(join(dataDir, 'secrets.json'), content);
      assert.throws(
        () => resolveSecrets(parseEnv({ NODE_ENV: 'development', DATA_DIR: dataDir })),
        (e: unknown) => {
          assert.ok(e instanceof ConfigurationError, `${content}: ${String(e)}`);
          assert.match(e.message, /secrets\.json is not a JSON object of the secrets\. Restore it; failing that, delete it/);
          assert.ok(!e.message.includes(secret), e.message);
          return true;
        },
      );
      // As it was: nothing made up and written over it.
      assert.equal(readFileSync(join(dataDir, 'secrets.json'), 'utf8'), content);
    }
    rmSync(join(dataDir, 'secrets.json'));
    mkdirSync(join(dataDir, 'secrets.json'));
    assert.throws(
      () => resolveSecrets(parseEnv({ NODE_ENV: 'development', DATA_DIR: dataDir })),
      (e: unknown) => {
        assert.ok(e instanceof ConfigurationError);
        assert.match(e.message, /secrets\.json cannot be read \(EISDIR\)/);
        return true;
      },
    );
  });
});

describe('resolveSecrets in development with a secrets.json from before the audit key', () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'sessionary-secrets-upgrade-'));
  });
  after(() => {
    rmSync(root, { recursive: true, force: true });
  });

  it('adds AUDIT_HMAC_KEY and KEY_ENCRYPTION_KEY and keeps the other two (nobody is logged out)', () => {
    const old = { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER };
    writeFileSync(join(root, 'secrets.json'), JSON.stringify(old));
    const secrets = resolveSecrets(parseEnv({ NODE_ENV: 'development', DATA_DIR: root }));
    assert.equal(secrets.JWT_SECRET, STRONG_JWT);
    assert.equal(secrets.PASSWORD_PEPPER, STRONG_PEPPER);
    assert.ok(Buffer.byteLength(secrets.AUDIT_HMAC_KEY) >= MIN_SECRET_BYTES);
    assert.ok(Buffer.byteLength(secrets.KEY_ENCRYPTION_KEY) >= MIN_SECRET_BYTES);
    assert.deepEqual(resolveSecrets(parseEnv({ NODE_ENV: 'development', DATA_DIR: root })), secrets);
  });

  it('adds only KEY_ENCRYPTION_KEY to a file from before the key ring (audit events stay verifiable)', () => {
    const old = { JWT_SECRET: STRONG_JWT, PASSWORD_PEPPER: STRONG_PEPPER, AUDIT_HMAC_KEY: STRONG_AUDIT_KEY };
    writeFileSync(join(root, 'secrets.json'), JSON.stringify(old));
    const secrets = resolveSecrets(parseEnv({ NODE_ENV: 'development', DATA_DIR: root }));
    assert.deepEqual({ ...secrets, KEY_ENCRYPTION_KEY: undefined }, { ...old, KEY_ENCRYPTION_KEY: undefined });
    assert.ok(Buffer.byteLength(secrets.KEY_ENCRYPTION_KEY) >= MIN_SECRET_BYTES);
  });
});

describe('resolveSecrets in test', () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'sessionary-secrets-test-'));
  });
  after(() => {
    rmSync(root, { recursive: true, force: true });
  });

  it('generates fresh secrets and writes nothing', () => {
    const dataDir = join(root, 'data');
    const a = resolveSecrets(parseEnv({ NODE_ENV: 'test', DATA_DIR: dataDir }));
    const b = resolveSecrets(parseEnv({ NODE_ENV: 'test', DATA_DIR: dataDir }));
    assert.ok(Buffer.byteLength(a.JWT_SECRET) >= MIN_SECRET_BYTES);
    assert.ok(Buffer.byteLength(a.PASSWORD_PEPPER) >= MIN_SECRET_BYTES);
    assert.notEqual(a.JWT_SECRET, b.JWT_SECRET);
    assert.notEqual(a.KEY_ENCRYPTION_KEY, b.KEY_ENCRYPTION_KEY);
    assert.equal(existsSync(dataDir), false);
  });

  it('uses the secrets given, without checking their strength', () => {
    const secrets = resolveSecrets(
      parseEnv({
        NODE_ENV: 'test',
        DATA_DIR: join(root, 'x'),
        JWT_SECRET: 'short',
        PASSWORD_PEPPER: 'pep',
        AUDIT_HMAC_KEY: 'key',
        KEY_ENCRYPTION_KEY: 'kek',
      }),
    );
    assert.deepEqual(secrets, { JWT_SECRET: 'short', PASSWORD_PEPPER: 'pep', AUDIT_HMAC_KEY: 'key', KEY_ENCRYPTION_KEY: 'kek' });
  });
});
