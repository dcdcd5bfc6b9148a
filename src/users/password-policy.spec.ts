import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import 'reflect-metadata';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { validateSync } from 'class-validator';
import {
  commonPasswordLines,
  IsAcceptablePassword,
  isCommonPassword,
  PASSWORD_MAX_LENGTH,
  PASSWORD_MIN_LENGTH,
  passwordLength,
} from './password-policy';

class PasswordForm {
  @IsAcceptablePassword()
  password: unknown;
}

function check(password: unknown): string[] {
  const form = new PasswordForm();
  form.password = password;
  return validateSync(form).flatMap((e) => Object.values(e.constraints ?? {}));
}

const UNCOMMON = 'vN7#qL2!xT9@'; // 12 characters, not in the list

describe('passwordLength', () => {
  it('counts code points, not UTF-16 units', () => {
    const keys = '🔑'.repeat(12);
    assert.equal(keys.length, 24);
    assert.equal(passwordLength(keys), 12);
  });

  it('counts ASCII characters one each', () => {
    assert.equal(passwordLength('abc'), 3);
    assert.equal(passwordLength(''), 0);
  });
});

describe('isCommonPassword', () => {
  it('finds a listed password', () => {
    assert.equal(isCommonPassword('qwerty123456'), true);
  });

  it('finds a listed password in capitals', () => {
    assert.equal(isCommonPassword('QWERTY123456'), true);
    assert.equal(isCommonPassword('Password'), true);
  });

  it('does not find a random string', () => {
    assert.equal(isCommonPassword(UNCOMMON), false);
    assert.equal(isCommonPassword('c9f1e7b2a4d64b3e8f0a'), false);
  });

  it('ships at least 10,000 entries, of which at least 3,000 pass the length rule (ASVS 6.2.4)', () => {
    const entries = commonPasswordLines(readFileSync(join(__dirname, '..', '..', '..', 'data', 'common-passwords.txt'), 'utf8'));
    assert.ok(entries.length >= 10_000, String(entries.length));
    const eligible = entries.filter((p) => passwordLength(p) >= 12 && passwordLength(p) <= 128);
    assert.ok(eligible.length >= 3_000, String(eligible.length));
    assert.ok(eligible.every(isCommonPassword));
  });

  it("finds the listed passwords that start with '#' (only the list's leading comment block is skipped)", () => {
    for (const listed of ['#imnotahacker69', '#dslishere123', '#1modernstuff', '#include<lizardstresser>', '###########eron############']) {
      assert.equal(isCommonPassword(listed), true, listed);
    }
    assert.deepEqual(commonPasswordLines('# a comment\n# another\npassword\n#hashtag123\n\n'), ['password', '#hashtag123']);
    assert.equal(isCommonPassword('# Common and breached passwords, one per line, lower case, most common first: the 10,000 most'), false);
  });

  it('does not treat the blank end of the list as a password', () => {
    assert.equal(isCommonPassword(''), false);
  });
});

describe('@IsAcceptablePassword', () => {
  it('accepts an uncommon 12-character password', () => {
    assert.deepEqual(check(UNCOMMON), []);
  });

  it('accepts 12 emoji (12 code points, 24 UTF-16 units)', () => {
    assert.deepEqual(check('🔑'.repeat(12)), []);
  });

  it(`accepts exactly ${PASSWORD_MAX_LENGTH} characters`, () => {
    assert.deepEqual(check('Zq9!'.repeat(32)), []);
  });

  it('refuses 6 emoji even though they are 12 UTF-16 units', () => {
    const pw = '🔒'.repeat(6);
    assert.deepEqual(check(pw), [`password must be ${PASSWORD_MIN_LENGTH} to ${PASSWORD_MAX_LENGTH} characters long`]);
  });

  it('refuses a too short password without echoing it', () => {
    const pw = 'Sh0rt-XYZZY'; // 11 characters
    const messages = check(pw);
    assert.deepEqual(messages, ['password must be 12 to 128 characters long']);
    assert.ok(!messages.join().includes(pw));
  });

  it('refuses a too long password (129) without echoing it', () => {
    const pw = `${'Zq9!'.repeat(32)}Z`;
    assert.equal(passwordLength(pw), 129);
    const messages = check(pw);
    assert.deepEqual(messages, ['password must be 12 to 128 characters long']);
    assert.ok(!messages.join().includes('Zq9!'));
  });

  it('refuses a common password (whatever its case) without echoing it', () => {
    for (const pw of ['qwerty123456', 'QWERTY123456']) {
      const messages = check(pw);
      assert.deepEqual(messages, ['password is too common; choose another']);
      assert.ok(!messages.join().toLowerCase().includes('qwerty'));
    }
  });

  it('refuses a non-string', () => {
    const messages = check(123456789012345);
    assert.deepEqual(messages, ['password must be a string']);
    assert.ok(!messages.join().includes('123456789012345'));
  });

  it('refuses a missing password', () => {
    assert.deepEqual(check(undefined), ['password must be a string']);
  });
});
