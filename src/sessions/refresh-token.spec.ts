import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { generateRefreshToken, hashRefreshToken, looksLikeRefreshToken } from './refresh-token';

describe('generateRefreshToken', () => {
  it('makes 43 URL-safe characters (256 bits in base64url, no padding)', () => {
    for (let i = 0; i < 50; i++) {
      const token = generateRefreshToken();
      assert.equal(token.length, 43);
      assert.match(token, /^[A-Za-z0-9_-]{43}$/);
      assert.equal(Buffer.from(token, 'base64url').length, 32);
    }
  });

  it('makes distinct tokens', () => {
    const tokens = new Set(Array.from({ length: 1000 }, () => generateRefreshToken()));
    assert.equal(tokens.size, 1000);
  });

  it('makes tokens that looksLikeRefreshToken accepts', () => {
    for (let i = 0; i < 50; i++) assert.equal(looksLikeRefreshToken(generateRefreshToken()), true);
  });
});

describe('hashRefreshToken', () => {
  const token = generateRefreshToken();

  it('is 64 lower-case hex characters (SHA-256 of the token)', () => {
    const hash = hashRefreshToken(token);
    assert.match(hash, /^[0-9a-f]{64}$/);
    assert.equal(hash, createHash('sha256').update(token, 'utf8').digest('hex'));
  });

  it('is deterministic', () => {
    assert.equal(hashRefreshToken(token), hashRefreshToken(token));
  });

  it('differs for different tokens', () => {
    assert.notEqual(hashRefreshToken(token), hashRefreshToken(generateRefreshToken()));
    assert.notEqual(hashRefreshToken('a'.repeat(43)), hashRefreshToken(`${'a'.repeat(42)}b`));
  });

  it('is not the token itself', () => {
    assert.ok(!hashRefreshToken(token).includes(token));
  });
});

describe('looksLikeRefreshToken', () => {
  it('accepts 43 characters of the base64url alphabet', () => {
    assert.equal(looksLikeRefreshToken(`${'A'.repeat(20)}z09_-${'b'.repeat(18)}`), true);
  });

  for (const [name, candidate] of [
    ['an empty string', ''],
    ['42 characters', 'a'.repeat(42)],
    ['44 characters', 'a'.repeat(44)],
    ['a 64-character hash', 'f'.repeat(64)],
    ['standard base64 "+"', `${'a'.repeat(42)}+`],
    ['standard base64 "/"', `${'a'.repeat(42)}/`],
    ['padding "="', `${'a'.repeat(42)}=`],
    ['a space', `${'a'.repeat(42)} `],
    ['a trailing newline', `${'a'.repeat(43)}\n`],
    ['a leading newline', `\n${'a'.repeat(43)}`],
    ['a non-ASCII letter', `${'a'.repeat(42)}é`],
    ['a dot', `${'a'.repeat(42)}.`],
  ] as const) {
    it(`refuses ${name}`, () => {
      assert.equal(looksLikeRefreshToken(candidate), false);
    });
  }
});
