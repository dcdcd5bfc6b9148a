import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { registerDecorator, ValidationOptions } from 'class-validator';

export const PASSWORD_MIN_LENGTH = 12;
export const PASSWORD_MAX_LENGTH = 128;

// data/ sits at the project root; this file runs from dist/src/users/ (app, tests and image alike).
const COMMON_PASSWORDS_FILE = join(__dirname, '..', '..', '..', 'data', 'common-passwords.txt');

let commonPasswords: Set<string> | undefined;
function loadCommonPasswords(): Set<string> {
  commonPasswords ??= new Set(commonPasswordLines(readFileSync(COMMON_PASSWORDS_FILE, 'utf8')));
  return commonPasswords;
}

/**
 * The list's passwords: every non-empty line after its leading comment block. Only that block:
 * passwords may start with '#' too (five do; until 0.20.2 they were skipped as comments).
 */
export function commonPasswordLines(text: string): string[] {
  const lines = text.split('\n');
  let first = 0;
  while (first < lines.length && lines[first].startsWith('#')) first++;
  return lines.slice(first).filter((line) => line);
}

/** Counted in Unicode code points, as API.md says, not UTF-16 units. */
export function passwordLength(password: string): number {
  return [...password].length;
}

/** The list is lower case; a capital letter does not make "Password1234" uncommon. */
export function isCommonPassword(password: string): boolean {
  return loadCommonPasswords().has(password.toLowerCase());
}

/**
 * API.md's password rules (ASVS 6.2.1, 6.2.4, 6.2.9): 12 to 128 code points, any characters,
 * not a common password. The password itself is never part of the message.
 */
export function IsAcceptablePassword(options?: ValidationOptions): PropertyDecorator {
  return (target, propertyName) =>
    registerDecorator({
      name: 'isAcceptablePassword',
      target: target.constructor,
      propertyName: propertyName as string,
      options,
      validator: {
        validate(value: unknown) {
          if (typeof value !== 'string') return false;
          const length = passwordLength(value);
          return length >= PASSWORD_MIN_LENGTH && length <= PASSWORD_MAX_LENGTH && !isCommonPassword(value);
        },
        defaultMessage(args) {
          const value = args?.value;
          if (typeof value !== 'string') return `${args?.property} must be a string`;
          const length = passwordLength(value);
          if (length < PASSWORD_MIN_LENGTH || length > PASSWORD_MAX_LENGTH) {
            return `${args?.property} must be ${PASSWORD_MIN_LENGTH} to ${PASSWORD_MAX_LENGTH} characters long`;
          }
          return `${args?.property} is too common; choose another`;
        },
      },
    });
}
