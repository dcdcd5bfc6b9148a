import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ConfigService } from '@nestjs/config';
import * as bcrypt from 'bcrypt';
import type { AppConfig } from '../config/config';
import { PasswordHasher } from './password-hasher';

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
});
