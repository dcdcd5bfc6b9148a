import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ConfigService } from '@nestjs/config';
import * as bcrypt from 'bcrypt';
import type { AppConfig } from '../config/config';
import { paddingCosts, PasswordHasher } from './password-hasher';

function hasherWith(pepper: string, cost = 4): PasswordHasher {
  const values: Record<string, unknown> = { PASSWORD_PEPPER: pepper, BCRYPT_COST: cost };
  return new PasswordHasher({ get: (k: string) => values[k] } as unknown as ConfigService<AppConfig, true>);
}

const PEPPER = 'pepper-0123456789abcdefghijklmnopqrstuvwxyz';
const PASSWORD = 'correct horse battery staple';

describe('PasswordHasher', { timeout: 30_000 }, () => {
  const hasher = hasherWith(PEPPER);

  it('hashes with bcrypt at the configured cost, never storing the password', async () => {
    const hash = await hasher.hash(PASSWORD);
    assert.match(hash, /^\$2[aby]\$04\$/);
    assert.equal(hash.length, 60);
    assert.ok(!hash.includes(PASSWORD));
  });

  it('verifies the password it hashed', async () => {
    assert.equal(await hasher.verify(PASSWORD, await hasher.hash(PASSWORD)), true);
  });

  it('salts: two hashes of one password differ and both verify', async () => {
    const [a, b] = await Promise.all([hasher.hash(PASSWORD), hasher.hash(PASSWORD)]);
    assert.notEqual(a, b);
    assert.equal(await hasher.verify(PASSWORD, a), true);
    assert.equal(await hasher.verify(PASSWORD, b), true);
  });

  it('refuses a different password', async () => {
    const hash = await hasher.hash(PASSWORD);
    assert.equal(await hasher.verify('correct horse battery stapler', hash), false);
    assert.equal(await hasher.verify('', hash), false);
  });

  it('tells apart passwords that share their first 100 characters (no 72-byte truncation)', async () => {
    const prefix = 'p'.repeat(100);
    const hash = await hasher.hash(`${prefix}A`);
    assert.equal(await hasher.verify(`${prefix}A`, hash), true);
    assert.equal(await hasher.verify(`${prefix}B`, hash), false);
    // Without the pre-hash bcrypt itself could not tell them apart: the test is meaningful.
    const raw = await bcrypt.hash(`${prefix}A`, 4);
    assert.equal(await bcrypt.compare(`${prefix}B`, raw), true);
  });

  it('tells apart multi-byte passwords that differ only after byte 72', async () => {
    const prefix = '🔑'.repeat(30); // 120 bytes
    const hash = await hasher.hash(`${prefix}🔒`);
    assert.equal(await hasher.verify(`${prefix}🔒`, hash), true);
    assert.equal(await hasher.verify(`${prefix}🔓`, hash), false);
  });

  it('does not verify a hash made with another pepper', async () => {
    const hash = await hasherWith('another-pepper-0123456789abcdefghijklmnopqrst').hash(PASSWORD);
    assert.equal(await hasher.verify(PASSWORD, hash), false);
  });

  it('verifyAgainstNobody resolves false', async () => {
    assert.strictEqual(await hasher.verifyAgainstNobody(PASSWORD), false);
  });

  it('verifyAgainstNobody resolves false after onModuleInit prepared the dummy hash, repeatedly', async () => {
    const h = hasherWith(PEPPER);
    h.onModuleInit();
    assert.strictEqual(await h.verifyAgainstNobody(PASSWORD), false);
    assert.strictEqual(await h.verifyAgainstNobody(''), false);
  });

  it('answers false, after the work of an unknown account, for a stored hash that is not bcrypt (another scheme, a marker): never an error', async (t) => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- the CommonJS module itself, not an import's copy
    const compared = t.mock.method(require('bcrypt') as typeof bcrypt, 'compare');
    // A cost bcrypt never makes, too: 99 (or 03) with a well-formed salt and hash.
    const body = 'a'.repeat(53);
    for (const stored of ['!', '', '$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g', '$2b$04$short', `$2b$99$${body}`, `$2b$03$${body}`]) {
      compared.mock.resetCalls();
      assert.equal(await hasher.verify(PASSWORD, stored), false, stored);
      // One compare, against the dummy hash of the current cost, as verifyAgainstNobody does.
      assert.deepEqual(
        compared.mock.calls.map((call) => bcrypt.getRounds(call.arguments[1] as string)),
        [4],
        stored,
      );
    }
  });

  it("pads a compare of a hash made at a lower cost to the current cost's work: dummy compares of each cost from its own up", async (t) => {
    const raised = hasherWith(PEPPER, 7);
    const oldHash = await hasherWith(PEPPER, 4).hash(PASSWORD);
    // bcrypt's own module object: the hasher reads its compare at each call.
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- the CommonJS module itself, not an import's copy
    const compared = t.mock.method(require('bcrypt') as typeof bcrypt, 'compare');
    assert.equal(await raised.verify(PASSWORD, oldHash), true);
    assert.equal(await raised.verify('a wrong one', oldHash), false);
    const costs = compared.mock.calls.map((call) => bcrypt.getRounds(call.arguments[1] as string));
    // Each verify: its own hash (4), then 4, 5 and 6: 16 + 16 + 32 + 64 = 128 = 2^7, as one compare at cost 7.
    assert.deepEqual(costs, [4, 4, 5, 6, 4, 4, 5, 6]);
    assert.equal(
      costs.slice(0, 4).reduce((work, cost) => work + 2 ** cost, 0),
      2 ** 7,
    );
    // A hash at the current cost: one compare, as before.
    compared.mock.resetCalls();
    assert.equal(await raised.verify(PASSWORD, await raised.hash(PASSWORD)), true);
    assert.deepEqual(
      compared.mock.calls.map((call) => bcrypt.getRounds(call.arguments[1] as string)),
      [7],
    );
  });
});

describe('PasswordHasher at start', () => {
  it("makes the dummy hashes of every cost from bcrypt's lowest up to the current one as it starts, so no first login pays for one", async (t) => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- the CommonJS module itself, not an import's copy
    const hashed = t.mock.method(require('bcrypt') as typeof bcrypt, 'hash');
    const hasher = hasherWith(PEPPER, 7);
    hasher.onModuleInit();
    assert.deepEqual(hashed.mock.calls.map((call) => call.arguments[1]).sort(), [4, 5, 6, 7]);
    const oldHash = await bcrypt.hash('x', 5);
    hashed.mock.resetCalls();
    assert.equal(await hasher.verify('wrong', oldHash), false);
    assert.equal(await hasher.verifyAgainstNobody('wrong'), false);
    assert.equal(hashed.mock.callCount(), 0, 'no hash made on the first logins');
  });
});

describe('paddingCosts', () => {
  it('is every cost from the stored one up to the current one, exclusive; nothing at or above it', () => {
    assert.deepEqual(paddingCosts(10, 12), [10, 11]);
    assert.deepEqual(paddingCosts(4, 5), [4]);
    assert.deepEqual(paddingCosts(12, 12), []);
    assert.deepEqual(paddingCosts(13, 12), []);
  });
});
