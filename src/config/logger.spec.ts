import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { neutraliseControlCharacters, scrubSecrets } from './logger';

describe('scrubSecrets', () => {
  const jwt = 'eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU';
  const refresh = 'Qm9ndXNSZWZyZXNoVG9rZW5WYWx1ZUZvclRlc3RzMTIz'; // 44 chars would not match; see below
  const refresh43 = refresh.slice(0, 43);
  const bcrypt = '$2b$12$' + 'a'.repeat(53);
  const hex = 'ab'.repeat(32);

  for (const [name, input, secret] of [
    ['a JWT', `token ${jwt} seen`, jwt],
    ['a bearer header', 'Authorization: Bearer abc.def-ghi', 'abc.def-ghi'],
    ['a bcrypt hash', `hash=${bcrypt}`, bcrypt],
    ['a token hash', `looked up ${hex}`, hex],
    ['a refresh token', `refresh ${refresh43} used`, refresh43],
    ['a password in JSON', '{"email":"a@b.c","password":"hunter2-is-long"}', 'hunter2-is-long'],
    ['a password in key=value', 'password=hunter2-is-long next', 'hunter2-is-long'],
    ['a database password', 'connect postgres://app:s3cr3t-pass@db:5432/x failed', 's3cr3t-pass'],
  ] as const) {
    it(`masks ${name}`, () => {
      const out = scrubSecrets(input);
      assert.ok(!out.includes(secret), out);
      assert.match(out, /REDACTED|\*\*\*/);
    });
  }

  it('leaves ordinary text, UUIDs and ISO dates alone', () => {
    const text = 'Session 3f2b1c9e-8d7a-4b6c-9e5f-1a2b3c4d5e6f ended at 2026-11-26T23:00:00.000Z (idle_timeout)';
    assert.equal(scrubSecrets(text), text);
  });
});

describe('neutraliseControlCharacters', () => {
  it('escapes line breaks and other control characters so one event stays one line', () => {
    const out = neutraliseControlCharacters('curl\r\n[Nest] 1 - ERROR forged\u2028x\u001b[31m');
    assert.ok(!/[\r\n\u2028\u001b]/.test(out));
    assert.equal(out, 'curl\\u000d\\u000a[Nest] 1 - ERROR forged\\u2028x\\u001b[31m');
  });
});
