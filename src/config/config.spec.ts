import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { loadConfig } from './config';

describe('loadConfig(raw)', () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'sessionary-config-'));
  });
  after(() => {
    rmSync(root, { recursive: true, force: true });
  });

  it('validates the given variables, applies defaults and resolves secrets (test: generated, nothing written)', () => {
    const config = loadConfig({ NODE_ENV: 'test', DATA_DIR: 'relative-data-XYZ', PORT: '5000' });
    assert.equal(config.PORT, 5000);
    assert.equal(config.ACCESS_TOKEN_TTL, 900);
    assert.equal(config.MIGRATIONS_RUN, true);
    assert.equal(config.DATA_DIR, resolve('relative-data-XYZ'));
    assert.ok(isAbsolute(config.DATA_DIR));
    assert.equal(typeof config.JWT_SECRET, 'string');
    assert.ok(Buffer.byteLength(config.JWT_SECRET) >= 32);
    assert.ok(Buffer.byteLength(config.PASSWORD_PEPPER) >= 32);
    assert.equal(existsSync(config.DATA_DIR), false);
  });

  it('reads only the object it is given, not process.env', () => {
    const saved = process.env.PORT;
    process.env.PORT = '6123';
    try {
      assert.equal(loadConfig({ NODE_ENV: 'test', DATA_DIR: root }).PORT, 3000);
    } finally {
      if (saved === undefined) delete process.env.PORT;
      else process.env.PORT = saved;
    }
  });

  it('in development persists the secrets under DATA_DIR', () => {
    const dataDir = join(root, 'dev');
    const first = loadConfig({ NODE_ENV: 'development', DATA_DIR: dataDir });
    assert.equal(statSync(join(dataDir, 'secrets.json')).mode & 0o777, 0o600);
    const second = loadConfig({ NODE_ENV: 'development', DATA_DIR: dataDir });
    assert.equal(second.JWT_SECRET, first.JWT_SECRET);
    assert.equal(second.PASSWORD_PEPPER, first.PASSWORD_PEPPER);
  });

  it('in production refuses a weak secret without echoing it', () => {
    const weak = 'a'.repeat(40);
    assert.throws(
      () =>
        loadConfig({
          NODE_ENV: 'production',
          JWT_SECRET: weak,
          PASSWORD_PEPPER: randomBytes(48).toString('base64'),
          AUDIT_HMAC_KEY: randomBytes(48).toString('base64'),
        }),
      (e: unknown) => {
        assert.ok(e instanceof Error);
        assert.match(e.message, /JWT_SECRET is a well-known or low-entropy value/);
        assert.ok(!e.message.includes(weak));
        return true;
      },
    );
  });

  it('in production returns strong secrets as given', () => {
    const JWT_SECRET = randomBytes(48).toString('base64');
    const PASSWORD_PEPPER = randomBytes(48).toString('base64');
    const AUDIT_HMAC_KEY = randomBytes(48).toString('base64');
    const KEY_ENCRYPTION_KEY = randomBytes(48).toString('base64');
    const config = loadConfig({ NODE_ENV: 'production', JWT_SECRET, PASSWORD_PEPPER, AUDIT_HMAC_KEY, KEY_ENCRYPTION_KEY, DATA_DIR: root });
    assert.equal(config.AUDIT_HMAC_KEY, AUDIT_HMAC_KEY);
    assert.equal(config.KEY_ENCRYPTION_KEY, KEY_ENCRYPTION_KEY);
    assert.equal(config.JWT_SECRET, JWT_SECRET);
    assert.equal(config.PASSWORD_PEPPER, PASSWORD_PEPPER);
    assert.equal(config.NODE_ENV, 'production');
  });

  it('refuses an invalid variable before resolving secrets, naming it and not its value', () => {
    assert.throws(
      () => loadConfig({ NODE_ENV: 'test', BCRYPT_COST: 'cost-XYZZY' }),
      (e: unknown) => {
        assert.ok(e instanceof Error);
        assert.match(e.message, /BCRYPT_COST is invalid/);
        assert.ok(!e.message.includes('XYZZY'));
        return true;
      },
    );
  });
});
