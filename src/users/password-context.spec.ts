import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BadRequestException } from '@nestjs/common';
import { assertPasswordFreeOfContext } from './password-context';

describe('assertPasswordFreeOfContext', () => {
  const account = { username: 'Ada_Lovelace', email: 'countess.ada@example.com' };

  for (const password of ['my sessionary login!', 'ada_lovelace-2026!!', 'COUNTESS.ADA rules', 'xxSESSIONARYxx']) {
    it(`refuses ${JSON.stringify(password)}`, () => {
      assert.throws(() => assertPasswordFreeOfContext(password, account), BadRequestException);
    });
  }

  it('allows passwords without those words, and ignores parts shorter than 4 characters', () => {
    assert.doesNotThrow(() => assertPasswordFreeOfContext('correct horse battery', account));
    assert.doesNotThrow(() => assertPasswordFreeOfContext('bob is a builder here', { username: 'bob', email: 'al@x.io' }));
  });
});
