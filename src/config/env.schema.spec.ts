import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { describeFatal } from './describe-fatal';
import { ConfigurationError } from './configuration-error';
import { docsEnabled, ENV_VARIABLES, NodeEnv, parseEnv, parseTrustProxy } from './env.schema';

/** parseEnv must throw; the message must name `name` and must not contain `value`. */
function assertRefusedNaming(raw: Record<string, unknown>, name: string, value: string, pattern = new RegExp(`\\b${name} is invalid\\b`)): void {
  assert.throws(
    () => parseEnv(raw),
    (e: unknown) => {
      assert.ok(e instanceof Error);
      assert.match(e.message, /^Invalid configuration: /);
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes(value), `the message leaks the value: ${e.message}`);
      return true;
    },
  );
}

describe('parseEnv', () => {
  it('applies the defaults to an empty environment', () => {
    const env = parseEnv({});
    assert.equal(env.NODE_ENV, NodeEnv.Development);
    assert.equal(env.PORT, 3000);
    assert.equal(env.HOST, '0.0.0.0');
    assert.equal(env.SHUTDOWN_TIMEOUT, 25);
    assert.equal(env.DATABASE_POOL_MAX, 20);
    assert.equal(env.DATABASE_CONNECTION_LIFETIME, 600);
    assert.equal(env.ACCESS_TOKEN_TTL, 900);
    assert.equal(env.SESSION_IDLE_TTL, 3600);
    assert.equal(env.SESSION_ABSOLUTE_TTL, 86400);
    assert.equal(env.REFRESH_TOKEN_TTL, 86400);
    assert.equal(env.REAUTH_MAX_AGE, 300);
    assert.equal(env.SESSION_RETENTION, 30 * 86400);
    assert.equal(env.BCRYPT_COST, 12);
    assert.equal(env.SESSION_CLEANUP_CRON, '*/5 * * * *');
    assert.equal(env.MIGRATIONS_RUN, true);
    assert.equal(env.TRUST_PROXY, 'false');
    assert.equal(env.LOG_LEVEL, 'log');
    assert.equal(env.ACCESS_LOG_PROBES, 'failures');
    assert.equal(env.JWT_ISSUER, 'sessionary');
    assert.equal(env.JWT_AUDIENCE, 'sessionary-api');
    assert.equal(env.DATA_DIR, '.data');
    assert.equal(env.DATABASE_URL, undefined);
    assert.equal(env.JWT_SECRET, undefined);
    assert.equal(env.PASSWORD_PEPPER, undefined);
    assert.equal(env.RATE_LIMIT_PER_MINUTE, 600);
    assert.equal(env.RATE_LIMIT_SYNC_INTERVAL, 1000);
    assert.equal(env.REGISTER_MAX_TOTAL, 0, 'no limit on all registrations together unless set');
  });

  it('parses RATE_LIMIT_SYNC_INTERVAL within 100..60000 ms', () => {
    assert.strictEqual(parseEnv({ RATE_LIMIT_SYNC_INTERVAL: '100' }).RATE_LIMIT_SYNC_INTERVAL, 100);
    assert.strictEqual(parseEnv({ RATE_LIMIT_SYNC_INTERVAL: '60000' }).RATE_LIMIT_SYNC_INTERVAL, 60000);
  });

  it('takes the int32 maximum of the settings clients see as integers', () => {
    const env = parseEnv({ ACCESS_TOKEN_TTL: '2147483647', RATE_LIMIT_PER_MINUTE: '2147483647', LOGIN_FAILURE_WINDOW: '2147483647' });
    assert.deepEqual([env.ACCESS_TOKEN_TTL, env.RATE_LIMIT_PER_MINUTE, env.LOGIN_FAILURE_WINDOW], [2147483647, 2147483647, 2147483647]);
  });

  it('parses numbers from strings', () => {
    const env = parseEnv({ PORT: '8080', ACCESS_TOKEN_TTL: '60', SESSION_IDLE_TTL: '600', SESSION_ABSOLUTE_TTL: '7200', BCRYPT_COST: '4' });
    assert.strictEqual(env.PORT, 8080);
    assert.strictEqual(env.ACCESS_TOKEN_TTL, 60);
    assert.strictEqual(env.SESSION_IDLE_TTL, 600);
    assert.strictEqual(env.SESSION_ABSOLUTE_TTL, 7200);
    assert.strictEqual(env.BCRYPT_COST, 4);
  });

  for (const [raw, expected] of [
    ['false', false],
    ['FALSE', false],
    ['0', false],
    ['no', false],
    ['off', false],
    ['true', true],
    [' True ', true],
    ['1', true],
    ['yes', true],
    ['on', true],
  ] as const) {
    it(`parses MIGRATIONS_RUN=${JSON.stringify(raw)} as ${expected}`, () => {
      assert.strictEqual(parseEnv({ MIGRATIONS_RUN: raw }).MIGRATIONS_RUN, expected);
    });
  }

  it('keeps the other settings as given', () => {
    const env = parseEnv({
      NODE_ENV: 'production',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'debug',
      DATABASE_URL: 'postgres://u:p@db:5432/app',
      JWT_SECRET: 'given-secret',
      SESSION_CLEANUP_CRON: '0 * * * *',
      TRUST_PROXY: '10.0.0.1',
    });
    assert.equal(env.NODE_ENV, NodeEnv.Production);
    assert.equal(env.HOST, '127.0.0.1');
    assert.equal(env.LOG_LEVEL, 'debug');
    assert.equal(env.DATABASE_URL, 'postgres://u:p@db:5432/app');
    assert.equal(env.JWT_SECRET, 'given-secret');
    assert.equal(env.SESSION_CLEANUP_CRON, '0 * * * *');
    assert.equal(env.TRUST_PROXY, '10.0.0.1');
  });

  it('treats blank optional strings as unset', () => {
    const env = parseEnv({ DATABASE_URL: '', JWT_SECRET: '  ', PASSWORD_PEPPER: '' });
    assert.equal(env.DATABASE_URL, undefined);
    assert.equal(env.JWT_SECRET, undefined);
    assert.equal(env.PASSWORD_PEPPER, undefined);
  });

  it('ignores variables that are not its own', () => {
    const env = parseEnv({ PATH: '/usr/bin', AWS_SECRET_ACCESS_KEY: 'not-ours', PORT: '4000' });
    assert.equal(env.PORT, 4000);
    assert.ok(!('PATH' in env));
    assert.ok(!('AWS_SECRET_ACCESS_KEY' in env));
  });

  for (const [name, value] of [
    ['PORT', 'port-XYZZY-4242'],
    ['PORT', '70000'],
    ['PORT', '-1'],
    ['PORT', '80.5'],
    ['SHUTDOWN_TIMEOUT', '-1'],
    ['DATABASE_POOL_MAX', '9'],
    ['DATABASE_CONNECTION_LIFETIME', '-1'],
    ['DATABASE_CONNECTION_LIFETIME', '86401'],
    ['DATABASE_POOL_MAX', '1001'],
    ['DATABASE_POOL_MAX', 'many-XYZZY'],
    ['SHUTDOWN_TIMEOUT', '3601'],
    ['SHUTDOWN_TIMEOUT', '2.5'],
    ['ACCESS_TOKEN_TTL', '0'],
    ['ACCESS_TOKEN_TTL', 'ttl-XYZZY'],
    ['SESSION_IDLE_TTL', '1.5'],
    ['SESSION_ABSOLUTE_TTL', '-86400'],
    ['REFRESH_TOKEN_TTL', 'forever-XYZZY'],
    ['REAUTH_MAX_AGE', '0'],
    ['REAUTH_MAX_AGE', '2.5'],
    ['REAUTH_MAX_AGE', 'recent-XYZZY'],
    ['REAUTH_MAX_AGE', '2147483648'],
    ['SESSION_RETENTION', '-5'],
    ['BCRYPT_COST', '3'],
    ['BCRYPT_COST', '32'],
    ['BCRYPT_COST', '16'],
    ['MIGRATIONS_RUN', 'maybe-XYZZY'],
    ['NODE_ENV', 'staging-XYZZY'],
    ['LOG_LEVEL', 'chatty-XYZZY'],
    ['ACCESS_LOG_PROBES', 'some-XYZZY'],
    ['DATABASE_URL', 'mysql://admin:S3cr3t-XYZZY@db/app'],
    ['RATE_LIMIT_SYNC_INTERVAL', '99'],
    ['RATE_LIMIT_SYNC_INTERVAL', '60001'],
    ['RATE_LIMIT_SYNC_INTERVAL', '250.5'],
    ['RATE_LIMIT_SYNC_INTERVAL', 'often-XYZZY'],
    // Clients are promised int32 (openapi.json: expiresIn, X-RateLimit-*, Retry-After).
    ['ACCESS_TOKEN_TTL', '2147483648'],
    ['RATE_LIMIT_PER_MINUTE', '2147483648'],
    ['LOGIN_FAILURE_WINDOW', '2147483648'],
    ['REGISTER_MAX_TOTAL', '-1'],
    ['REGISTER_MAX_TOTAL', '2147483648'],
  ] as const) {
    it(`refuses ${name}=${JSON.stringify(value)}, naming the variable and not the value`, () => {
      assertRefusedNaming({ [name]: value }, name, value);
    });
  }

  it('names every bad variable at once', () => {
    assert.throws(
      () => parseEnv({ PORT: 'nope-XYZZY', BCRYPT_COST: 'also-XYZZY' }),
      (e: unknown) => {
        assert.ok(e instanceof Error);
        assert.match(e.message, /PORT is invalid/);
        assert.match(e.message, /BCRYPT_COST is invalid/);
        assert.ok(!e.message.includes('XYZZY'));
        return true;
      },
    );
  });

  it('defaults the session cache on (100,000 entries, 300 s) and the touch interval unset', () => {
    const env = parseEnv({});
    assert.equal(env.SESSION_CACHE_MAX, 100_000);
    assert.equal(env.SESSION_CACHE_TTL, 300);
    assert.equal(env.SESSION_TOUCH_INTERVAL, undefined);
    assert.equal(env.DATABASE_LISTEN_URL, undefined);
  });

  it('reads SESSION_CACHE_MAX=0 (cache off), a touch interval and a listen URL', () => {
    const env = parseEnv({ SESSION_CACHE_MAX: '0', SESSION_TOUCH_INTERVAL: '30', DATABASE_LISTEN_URL: 'postgres://u:p@db-direct:5432/app' });
    assert.equal(env.SESSION_CACHE_MAX, 0);
    assert.equal(env.SESSION_TOUCH_INTERVAL, 30);
    assert.equal(env.DATABASE_LISTEN_URL, 'postgres://u:p@db-direct:5432/app');
  });

  it('refuses a touch interval over half the idle timeout, and a non-postgres listen URL without echoing it', () => {
    assert.throws(
      () => parseEnv({ SESSION_IDLE_TTL: '60', SESSION_TOUCH_INTERVAL: '31' }),
      /SESSION_TOUCH_INTERVAL must be at most half of SESSION_IDLE_TTL/,
    );
    assert.doesNotThrow(() => parseEnv({ SESSION_IDLE_TTL: '60', SESSION_TOUCH_INTERVAL: '30' }));
    assertRefusedNaming({ DATABASE_LISTEN_URL: 'mysql://admin:S3cr3t-XYZZY@db/app' }, 'DATABASE_LISTEN_URL', 'S3cr3t-XYZZY');
    assertRefusedNaming({ SESSION_CACHE_MAX: '-1' }, 'SESSION_CACHE_MAX', '-1');
  });

  it("refuses a timer's period past a day (Node runs a timer past 2^31 - 1 ms every millisecond), and a cache past 10M entries", () => {
    assertRefusedNaming({ AUDIT_CHECKPOINT_INTERVAL: '5000000' }, 'AUDIT_CHECKPOINT_INTERVAL', '5000000');
    assertRefusedNaming(
      { SESSION_IDLE_TTL: '10000000', SESSION_ABSOLUTE_TTL: '10000000', SESSION_TOUCH_INTERVAL: '4300000' },
      'SESSION_TOUCH_INTERVAL',
      '4300000',
    );
    assertRefusedNaming({ SESSION_CACHE_MAX: '10000001' }, 'SESSION_CACHE_MAX', '10000001');
    assert.doesNotThrow(() => parseEnv({ AUDIT_CHECKPOINT_INTERVAL: '86400', SESSION_CACHE_MAX: '10000000' }));
  });

  it('refuses an idle timeout longer than the absolute one', () => {
    assertRefusedNaming(
      { SESSION_IDLE_TTL: '7201', SESSION_ABSOLUTE_TTL: '7200' },
      'SESSION_IDLE_TTL',
      '7201',
      /SESSION_IDLE_TTL must not exceed SESSION_ABSOLUTE_TTL/,
    );
  });

  it('refuses a first login back-off longer than the failure window it is capped at; accepts one as long', () => {
    assertRefusedNaming(
      { LOGIN_BACKOFF_BASE: '901', LOGIN_FAILURE_WINDOW: '900' },
      'LOGIN_BACKOFF_BASE',
      '901',
      /LOGIN_BACKOFF_BASE must not exceed LOGIN_FAILURE_WINDOW/,
    );
    assert.throws(() => parseEnv({ LOGIN_FAILURE_WINDOW: '10' }), /LOGIN_BACKOFF_BASE must not exceed LOGIN_FAILURE_WINDOW/);
    assert.equal(parseEnv({ LOGIN_BACKOFF_BASE: '900', LOGIN_FAILURE_WINDOW: '900' }).LOGIN_BACKOFF_BASE, 900);
  });

  it('refuses a pool too small for the concurrent exports beside the jobs and requests', () => {
    assert.throws(
      () => parseEnv({ DATABASE_POOL_MAX: '12', AUDIT_EXPORT_MAX_CONCURRENT: '3' }),
      /DATABASE_POOL_MAX \(12\) must leave 10 connections for the jobs and requests beside AUDIT_EXPORT_MAX_CONCURRENT \(3\) exports: at least 13/,
    );
    assert.equal(parseEnv({ DATABASE_POOL_MAX: '12' }).DATABASE_POOL_MAX, 12);
  });

  it('accepts an idle timeout equal to the absolute one', () => {
    const env = parseEnv({ SESSION_IDLE_TTL: '7200', SESSION_ABSOLUTE_TTL: '7200' });
    assert.equal(env.SESSION_IDLE_TTL, 7200);
  });

  it('refuses a default idle timeout above a short absolute one', () => {
    assert.throws(() => parseEnv({ SESSION_ABSOLUTE_TTL: '60' }), /SESSION_IDLE_TTL must not exceed SESSION_ABSOLUTE_TTL/);
  });

  for (const cron of ['every-5-minutes-XYZZY', '61 * * * *', '* * * * * * *']) {
    it(`refuses the cron expression ${JSON.stringify(cron)} without echoing it`, () => {
      assertRefusedNaming({ SESSION_CLEANUP_CRON: cron }, 'SESSION_CLEANUP_CRON', cron, /SESSION_CLEANUP_CRON must be a valid cron expression/);
    });
  }

  it('refuses TRUST_PROXY "a b" without echoing it', () => {
    assertRefusedNaming({ TRUST_PROXY: 'a b' }, 'TRUST_PROXY', 'a b', /TRUST_PROXY must be true, false, a hop count or a list of addresses/);
  });

  // BUG: Number('') is 0, so an empty PORT (e.g. `PORT=` in .env) silently binds a random port,
  // and an empty SESSION_RETENTION deletes ended sessions at once. Blank numbers should be
  // refused (or fall back to the default) like blank optional strings are.
  it('refuses an empty PORT instead of reading it as 0', () => {
    assert.throws(() => parseEnv({ PORT: '' }), /PORT is invalid/);
  });

  it('refuses an empty SESSION_RETENTION instead of reading it as 0', () => {
    assert.throws(() => parseEnv({ SESSION_RETENTION: '' }), /SESSION_RETENTION is invalid/);
  });

  it('refuses an empty RATE_LIMIT_SYNC_INTERVAL instead of reading it as 0', () => {
    assert.throws(() => parseEnv({ RATE_LIMIT_SYNC_INTERVAL: '' }), /RATE_LIMIT_SYNC_INTERVAL is invalid/);
  });
});

describe('parseEnv: bounds and combinations', () => {
  const refusal = (vars: Record<string, string>) => {
    try {
      parseEnv(vars);
    } catch (e) {
      assert.ok(e instanceof ConfigurationError);
      return e.message;
    }
    return undefined;
  };

  it('says what a variable must be, from its rules, never quoting the value', () => {
    const message = refusal({ PORT: '70123', BCRYPT_COST: 'cost-XYZZY' }) ?? '';
    assert.match(message, /PORT is invalid \(must not be greater than 65535\)/);
    assert.match(message, /BCRYPT_COST is invalid \(.*must be an integer number.*\)/);
    assert.doesNotMatch(message, /70123|XYZZY/);
  });

  it('refuses AUDIT_RETENTION_DAYS past a hundred years (far past it, every closed month would look expired)', () => {
    assert.equal(parseEnv({ AUDIT_RETENTION_DAYS: '36500' }).AUDIT_RETENTION_DAYS, 36_500);
    for (const days of ['36501', '999999999', '100020795'])
      assert.match(refusal({ AUDIT_RETENTION_DAYS: days }) ?? '', /AUDIT_RETENTION_DAYS is invalid \(must not be greater than 36500\)/, days);
  });

  it('refuses durations and counts past what PostgreSQL intervals and int32 headers hold', () => {
    for (const name of [
      'SESSION_IDLE_TTL',
      'SESSION_ABSOLUTE_TTL',
      'REFRESH_TOKEN_TTL',
      'SESSION_RETENTION',
      'SESSION_CACHE_TTL',
      'LOGIN_BACKOFF_BASE',
    ]) {
      assert.match(
        refusal({ SESSION_ABSOLUTE_TTL: name === 'SESSION_IDLE_TTL' ? '9999999999999' : '86400', [name]: '9999999999999' }) ?? '',
        new RegExp(`${name} is invalid`),
        name,
      );
    }
    assert.equal(parseEnv({ SESSION_IDLE_TTL: '2147483647', SESSION_ABSOLUTE_TTL: '2147483647' }).SESSION_ABSOLUTE_TTL, 2_147_483_647);
    assert.match(refusal({ AUDIT_VERIFY_CHAINS_PER_PASS: '10000001' }) ?? '', /AUDIT_VERIFY_CHAINS_PER_PASS is invalid/);
  });

  it('reads whole decimal numbers only: not hex, binary, exponents or fractions', () => {
    assert.equal(parseEnv({ PORT: ' 4000 ' }).PORT, 4000);
    for (const raw of ['0x3E8', '0b1', '1e3', '1000.0', '1_000', '+1000'])
      assert.match(refusal({ SESSION_IDLE_TTL: raw }) ?? '', /SESSION_IDLE_TTL is invalid/, raw);
  });

  it('refuses an empty or blank JWT_ISSUER or JWT_AUDIENCE (jsonwebtoken would skip the check)', () => {
    for (const name of ['JWT_ISSUER', 'JWT_AUDIENCE'])
      for (const raw of ['', '  '])
        assert.match(refusal({ [name]: raw }) ?? '', new RegExp(`${name} is invalid \\(must not be empty\\)`), `${name}=${JSON.stringify(raw)}`);
  });

  it('refuses an empty or blank DATA_DIR (it would be the working directory: secrets.json beside the code)', () => {
    for (const raw of ['', ' ', '\t'])
      assert.match(
        refusal({ DATA_DIR: raw }) ?? '',
        /DATA_DIR is invalid \(must not be empty: a blank one would be the working directory\)/,
        JSON.stringify(raw),
      );
    assert.equal(parseEnv({ DATA_DIR: 'var/data' }).DATA_DIR, 'var/data');
  });

  it('refuses a bcrypt cost past 15 (a typo of 31 for 13 takes days a hash), saying so', () => {
    assert.equal(parseEnv({ BCRYPT_COST: '15' }).BCRYPT_COST, 15);
    for (const raw of ['16', '21', '31'])
      assert.match(refusal({ BCRYPT_COST: raw }) ?? '', /BCRYPT_COST is invalid \(must not be greater than 15: each step doubles/, raw);
  });

  it('refuses a bcrypt cost under 10 in production only', () => {
    assert.match(refusal({ NODE_ENV: 'production', BCRYPT_COST: '9' }) ?? '', /BCRYPT_COST must be at least 10 in production/);
    assert.equal(parseEnv({ NODE_ENV: 'production', BCRYPT_COST: '10' }).BCRYPT_COST, 10);
    assert.equal(parseEnv({ NODE_ENV: 'test', BCRYPT_COST: '4' }).BCRYPT_COST, 4);
  });

  it('refuses AUDIT_ARCHIVE_DIR without AUDIT_RETENTION_DAYS (nothing would ever be archived)', () => {
    assert.match(refusal({ AUDIT_ARCHIVE_DIR: '/var/archive' }) ?? '', /AUDIT_ARCHIVE_DIR is set without AUDIT_RETENTION_DAYS/);
    assert.equal(parseEnv({ AUDIT_ARCHIVE_DIR: '/var/archive', AUDIT_RETENTION_DAYS: '400' }).AUDIT_ARCHIVE_DIR, '/var/archive');
  });

  it('reads a blank AUDIT_SHIP_DIR as unset, not as a directory named with spaces', () => {
    assert.equal(parseEnv({ AUDIT_SHIP_DIR: '   ' }).AUDIT_SHIP_DIR, undefined);
  });

  it("prints a refused configuration's message alone, any other fatal error with its stack", () => {
    const refused = new ConfigurationError('Invalid configuration: PORT is invalid');
    assert.equal(describeFatal(refused), 'Invalid configuration: PORT is invalid');
    const other = new Error('boom');
    assert.equal(describeFatal(other), other.stack);
  });
});

describe('parseTrustProxy', () => {
  for (const raw of ['false', 'FALSE', '', '0']) {
    it(`reads ${JSON.stringify(raw)} as false`, () => {
      assert.deepEqual(parseTrustProxy(raw), { valid: true, value: false });
    });
  }

  for (const raw of ['true', 'TRUE', ' true ']) {
    it(`reads ${JSON.stringify(raw)} as true`, () => {
      assert.deepEqual(parseTrustProxy(raw), { valid: true, value: true });
    });
  }

  it('reads "2" as a function trusting the first two hops only', () => {
    const { valid, value } = parseTrustProxy('2');
    assert.equal(valid, true);
    assert.equal(typeof value, 'function');
    const trust = value as (address: string, hop: number) => boolean;
    assert.equal(trust('10.0.0.1', 0), true);
    assert.equal(trust('10.0.0.1', 1), true);
    assert.equal(trust('10.0.0.1', 2), false);
    assert.equal(trust('10.0.0.1', 3), false);
  });

  it('reads "10.0.0.1,10.0.0.2" as a list', () => {
    assert.deepEqual(parseTrustProxy('10.0.0.1,10.0.0.2'), { valid: true, value: ['10.0.0.1', '10.0.0.2'] });
  });

  it('trims list entries and accepts CIDRs, IPv6 and the named ranges', () => {
    assert.deepEqual(parseTrustProxy(' 10.0.0.0/8 , ::1, loopback,uniquelocal '), {
      valid: true,
      value: ['10.0.0.0/8', '::1', 'loopback', 'uniquelocal'],
    });
  });

  for (const raw of ['a b', 'example.com', '10.0.0.1;10.0.0.2', 'yes']) {
    it(`says ${JSON.stringify(raw)} is invalid`, () => {
      assert.equal(parseTrustProxy(raw).valid, false);
    });
  }

  // Doubtful: the address pattern is a character class, so any word made of hex letters
  // ("beef", "cafe", "add") passes as an "address" and only fails later in Fastify/proxy-addr.
  it('says "beef" is not an address', () => {
    assert.equal(parseTrustProxy('beef').valid, false);
  });
});

describe('AUDIT_SHIP_URL', () => {
  const refusal = (vars: Record<string, string>) => {
    try {
      parseEnv(vars);
    } catch (e) {
      return (e as Error).message;
    }
    return undefined;
  };

  it('takes http:// and https:// URLs, http:// in production only to a loopback address', () => {
    for (const url of ['https://logs.example.com/ingest', 'http://collector:8080/'])
      assert.equal(parseEnv({ AUDIT_SHIP_URL: url }).AUDIT_SHIP_URL, url);
    for (const url of ['https://logs.example.com/ingest', 'http://127.0.0.1:8686/', 'http://localhost:8686/x', 'http://[::1]:8686/']) {
      assert.equal(refusal({ NODE_ENV: 'production', AUDIT_SHIP_URL: url }), undefined, url);
    }
    const message = refusal({ NODE_ENV: 'production', AUDIT_SHIP_URL: 'http://collector.internal:8080/?token=s3cr3t' });
    assert.match(message ?? '', /AUDIT_SHIP_URL must be https:\/\/ in production, unless it is a loopback address/);
    assert.doesNotMatch(message!, /collector|s3cr3t/, 'the value is never quoted');
  });

  it('refuses what is not an http(s) URL, credentials in it, and AUDIT_SHIP_AUTHORIZATION without it', () => {
    for (const url of ['not a url', 'ftp://logs.example.com/', 'file:///var/log/x']) {
      assert.match(refusal({ AUDIT_SHIP_URL: url }) ?? '', /AUDIT_SHIP_URL must be an http:\/\/ or https:\/\/ URL/, url);
    }
    const message = refusal({ AUDIT_SHIP_URL: 'https://ship:p4ssw0rd@logs.example.com/' });
    assert.match(message ?? '', /AUDIT_SHIP_URL must not carry credentials: put them in AUDIT_SHIP_AUTHORIZATION/);
    assert.doesNotMatch(message!, /p4ssw0rd/);
    assert.match(refusal({ AUDIT_SHIP_AUTHORIZATION: 'Bearer x' }) ?? '', /AUDIT_SHIP_AUTHORIZATION is set without AUDIT_SHIP_URL/);
    assert.equal(
      parseEnv({ AUDIT_SHIP_URL: 'https://logs.example.com/', AUDIT_SHIP_AUTHORIZATION: 'Bearer x' }).AUDIT_SHIP_AUTHORIZATION,
      'Bearer x',
    );
  });

  it('refuses an AUDIT_SHIP_AUTHORIZATION that Node could not send as a header (a line break, a character past Latin-1), without quoting it', () => {
    for (const value of ['Bearer s3cr3t\n', 'Bearer s3cr3t\r\nX-Injected: 1', 'Bearer s3cr3t\u20ac']) {
      const message = refusal({ AUDIT_SHIP_URL: 'https://logs.example.com/', AUDIT_SHIP_AUTHORIZATION: value });
      assert.match(message ?? '', /AUDIT_SHIP_AUTHORIZATION must be one line of printable characters/, JSON.stringify(value));
      assert.doesNotMatch(message!, /s3cr3t/);
    }
  });

  it('caps pieces at 5,000 events unless AUDIT_SHIP_MAX_EVENTS says otherwise', () => {
    assert.equal(parseEnv({}).AUDIT_SHIP_MAX_EVENTS, 5_000);
    assert.equal(parseEnv({ AUDIT_SHIP_MAX_EVENTS: '500' }).AUDIT_SHIP_MAX_EVENTS, 500);
    assert.match(refusal({ AUDIT_SHIP_MAX_EVENTS: '0' }) ?? '', /AUDIT_SHIP_MAX_EVENTS is invalid/);
  });
});

describe('docsEnabled', () => {
  it('serves the docs by default everywhere but in production, and DOCS_ENABLED decides when set', () => {
    assert.equal(docsEnabled(parseEnv({ NODE_ENV: 'development' })), true);
    assert.equal(docsEnabled(parseEnv({ NODE_ENV: 'test' })), true);
    assert.equal(docsEnabled(parseEnv({ NODE_ENV: 'production' })), false);
    assert.equal(docsEnabled(parseEnv({ NODE_ENV: 'production', DOCS_ENABLED: 'true' })), true);
    assert.equal(docsEnabled(parseEnv({ NODE_ENV: 'development', DOCS_ENABLED: 'off' })), false);
    assert.equal(docsEnabled(parseEnv({ NODE_ENV: 'production', DOCS_ENABLED: '' })), false);
    assert.throws(() => parseEnv({ DOCS_ENABLED: 'maybe' }), /DOCS_ENABLED/);
    assert.equal(parseEnv({}).METRICS_ENABLED, true);
    assert.equal(parseEnv({ METRICS_ENABLED: 'false' }).METRICS_ENABLED, false);
  });

  it('takes a METRICS_TOKEN a bearer header can carry, and refuses one with spaces or other characters without quoting it', () => {
    assert.equal(parseEnv({ METRICS_TOKEN: 'Abc.def~ghi+jkl/mno=' }).METRICS_TOKEN, 'Abc.def~ghi+jkl/mno=');
    assert.equal(parseEnv({ METRICS_TOKEN: '' }).METRICS_TOKEN, undefined);
    for (const token of ['two words-of-a-secret', 'tab\tinside-secret', 'non-ascii-é-secret']) {
      assertRefusedNaming({ METRICS_TOKEN: token }, 'METRICS_TOKEN', token.slice(0, 8));
    }
  });
});

describe('ENV_VARIABLES', () => {
  it('names the optional variables too (fields without a default), or they would be ignored', () => {
    for (const name of [
      'DATABASE_URL',
      'JWT_SECRET',
      'AUDIT_HMAC_KEY',
      'DOCS_ENABLED',
      'AUDIT_RETENTION_DAYS',
      'SESSION_TOUCH_INTERVAL',
      'ROUTE_PREFIX',
      'METRICS_TOKEN',
    ]) {
      assert.ok(ENV_VARIABLES.includes(name), name);
    }
  });
});
