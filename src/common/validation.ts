import { ArgumentMetadata, BadRequestException, HttpException, Injectable, ValidationPipe } from '@nestjs/common';
import { domainToUnicode } from 'node:url';
import { getMetadataStorage, isEmail, registerDecorator, ValidateIf, ValidationOptions } from 'class-validator';

/**
 * An optional field: absent is fine, `null` is not (class-validator's @IsOptional lets null
 * through every rule, and a null would then reach the database).
 */
export const IsAbsentOr = (): PropertyDecorator => ValidateIf((_object, value) => value !== undefined);

/**
 * An email address, without the validator library's crash on malformed Unicode (its length
 * check calls encodeURI, which throws URIError on a lone surrogate).
 */
export function IsEmailAddress(options?: ValidationOptions): PropertyDecorator {
  return (target, propertyName) =>
    registerDecorator({
      name: 'isEmailAddress',
      target: target.constructor,
      propertyName: propertyName as string,
      options: { message: `${String(propertyName)} must be an email address`, ...options },
      validator: {
        validate: (value: unknown) => typeof value === 'string' && value.isWellFormed() && isEmail(value),
      },
    });
}

/**
 * What a new address (registration, a profile change) may not hold, though isEmail accepts it
 * in a quoted local part (`"a\r\nBcc: x"@example.com`) or anywhere (U+200B, U+202E): control
 * and format characters (line breaks, terminal escapes, zero-width and bidirectional marks),
 * whitespace of any kind, the quotes of a quoted local part, and every other character Unicode
 * says to show as nothing (Default_Ignorable_Code_Point: the combining grapheme joiner U+034F,
 * variation selectors, Hangul fillers; until 0.24.2 they passed, and `ad\u034Fa@example.com`
 * registered beside `ada@example.com`, and IDNA drops them from a domain, so two accounts
 * shared a mailbox). Such an address is echoed by the API, handed to host code (mail headers)
 * and printed by the CLI, and the invisible ones make two accounts that look alike.
 */
const UNSAFE_IN_NEW_ADDRESS = /[\p{Cc}\p{Cf}\p{Z}\s"\p{Default_Ignorable_Code_Point}]/u;

/**
 * A new email address: an email address (IsEmailAddress) without UNSAFE_IN_NEW_ADDRESS's
 * characters, in Unicode normalization form KC, its domain written as mail software shows it.
 * So that no two accounts look alike or share a mailbox by spelling alone: NFKC refuses a
 * combining accent beside the precomposed letter (NFD) and the compatibility forms that stand
 * for other letters (full-width `ａｄａ`, `ℯxample`, `ﬁ`); the domain's rule refuses what IDNA
 * maps onto another domain (an ideographic full stop `example。com`, a Punycode A-label
 * `xn--bcher-kva.de` for `bücher.de`): mail software that speaks IDNA delivers each to the plain
 * spelling's mailbox, yet each registered beside it as another address (until 0.25.0, when the
 * rule was form C alone). Login keeps
 * IsEmailAddress alone: any address stored before these rules still signs in.
 */
export function IsNewEmailAddress(options?: ValidationOptions): PropertyDecorator {
  return (target, propertyName) =>
    registerDecorator({
      name: 'isNewEmailAddress',
      target: target.constructor,
      propertyName: propertyName as string,
      options: { message: newEmailAddressMessage(String(propertyName)), ...options },
      validator: { validate: isNewEmailAddress },
    });
}

/** IsNewEmailAddress's rule, for a service that knows only later whether an address is new (a profile's unchanged one is not). */
export function isNewEmailAddress(value: unknown): boolean {
  return (
    typeof value === 'string' &&
    value.isWellFormed() &&
    !UNSAFE_IN_NEW_ADDRESS.test(value) &&
    value === value.normalize('NFKC') &&
    !hasLetterLowerCasedInTwo(value) &&
    isEmail(value) &&
    isDomainAsShown(value.slice(value.lastIndexOf('@') + 1))
  );
}

/**
 * Whether a letter of the value lower-cases into more than one in JavaScript: `İ` (U+0130),
 * which becomes `i̇` here and in IDNA but a plain `i` in PostgreSQL's lower() (glibc), by which
 * addresses are unique and found at login. So `ada@gmaİl.test` passed every other rule as a
 * domain of its own, yet took `ada@gmail.test`'s place in the database (until 0.25.0).
 */
function hasLetterLowerCasedInTwo(value: string): boolean {
  for (const c of value) if (c.toLowerCase().length !== c.length) return true;
  return false;
}

/**
 * Whether a domain is already what IDNA (UTS #46, as browsers and mail software map it) makes of
 * it but for letter case: its display form, not another spelling of one. `domainToUnicode`
 * maps and lower-cases it and turns A-labels into the letters they encode; an empty answer is a
 * domain IDNA refuses.
 */
function isDomainAsShown(domain: string): boolean {
  const shown = domainToUnicode(domain);
  return shown !== '' && shown === domain.toLowerCase();
}

export function newEmailAddressMessage(field: string): string {
  return `${field} must be an email address without spaces, quotes, control or invisible characters, in Unicode normalization form KC, its domain as it is shown (no Punycode)`;
}

/**
 * The global pipe: whitelist, forbid unknown properties, transform. Should a validator throw
 * instead of answering (a library bug on odd input), the request is still bad input: 400, not 500.
 *
 * It validates classes that carry class-validator rules, as every DTO of Sessionary's does, and
 * leaves a class without any alone: in a host app the pipe is global, and a host's DTO classes
 * validated otherwise (zod, a pipe of the host's own, a plain class) would all be refused by
 * `forbidUnknownValues` ("an unknown value was passed to the validate function") before the
 * host's own pipe ran (until 0.21.0).
 */
@Injectable()
export class AppValidationPipe extends ValidationPipe {
  /** Whether a class has rules, by class: decorators are applied once, when it is defined. */
  private readonly ruled = new WeakMap<object, boolean>();

  constructor() {
    super({ whitelist: true, forbidNonWhitelisted: true, transform: true, forbidUnknownValues: true });
  }

  override async transform(value: unknown, metadata: ArgumentMetadata): Promise<unknown> {
    try {
      if (metadata.metatype && this.toValidate(metadata) && !this.hasRules(metadata.metatype)) return value;
      return await super.transform(value, metadata);
    } catch (error) {
      if (error instanceof HttpException) throw error;
      throw new BadRequestException(`Invalid ${metadata.type === 'custom' ? 'input' : metadata.type}`);
    }
  }

  /**
   * The rules class-validator would apply to the class (its own and its ancestors'), as its
   * validator looks them up before refusing an unknown value. The metadata storage is global,
   * shared by every copy of class-validator in the process, a host's included.
   */
  private hasRules(metatype: NonNullable<ArgumentMetadata['metatype']>): boolean {
    let known = this.ruled.get(metatype);
    if (known === undefined) {
      known = getMetadataStorage().getTargetValidationMetadatas(metatype, '', false, false).length > 0;
      this.ruled.set(metatype, known);
    }
    return known;
  }
}
