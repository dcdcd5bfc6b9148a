import { applyDecorators } from '@nestjs/common';
import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { IsString, Matches, MaxLength } from 'class-validator';
import { IsEmailAddress, IsNewEmailAddress } from '../../common/validation';
import { IsAcceptablePassword, PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH } from '../password-policy';

// The field rules of API.md, shared by registration, login and profile DTOs.

export const USERNAME_PATTERN = /^[A-Za-z0-9_.-]{3,32}$/;
export const USERNAME_MESSAGE = 'username must be 3 to 32 characters of letters, digits, "_", "." or "-"';
export const EMAIL_MAX_LENGTH = 254;

export const UsernameField = (required = true) =>
  applyDecorators(
    (required ? ApiProperty : ApiPropertyOptional)({ example: 'ada_l', pattern: USERNAME_PATTERN.source, minLength: 3, maxLength: 32 }),
    IsString(),
    Matches(USERNAME_PATTERN, { message: USERNAME_MESSAGE }),
  );

/**
 * `rule`: 'new', an address to store (registration), held to IsNewEmailAddress's stricter
 * rules; 'stored', one to look up (login), which any stored address passes; 'new if changed'
 * (a profile), held to the stricter rules by the service only when it differs from the stored
 * one, so that a client sending the whole profile back with an address stored before those
 * rules can still change the rest.
 */
export const EmailField = (required = true, { rule }: { rule: 'new' | 'stored' | 'new if changed' } = { rule: 'new' }) =>
  applyDecorators(
    (required ? ApiProperty : ApiPropertyOptional)({
      example: 'ada@example.com',
      format: 'email',
      maxLength: EMAIL_MAX_LENGTH,
      ...(rule === 'stored'
        ? {}
        : {
            description: `No spaces, quotes, control or invisible characters; Unicode normalization form KC; the domain as it is shown (no Punycode A-labels)${rule === 'new if changed' ? ' (when it changes)' : ''}`,
          }),
    }),
    IsString(),
    MaxLength(EMAIL_MAX_LENGTH),
    rule === 'new' ? IsNewEmailAddress() : IsEmailAddress(),
  );

export const NewPasswordField = () =>
  applyDecorators(
    ApiProperty({
      minLength: PASSWORD_MIN_LENGTH,
      maxLength: PASSWORD_MAX_LENGTH,
      description: 'Any characters, counted in Unicode code points; not a common password',
      example: 'correct horse battery staple',
    }),
    IsAcceptablePassword(),
  );

/** A password to check, not to set: any string up to the maximum, so old rules never lock anyone out. */
export const ExistingPasswordField = (required = true) =>
  applyDecorators(
    (required ? ApiProperty : ApiPropertyOptional)({ maxLength: PASSWORD_MAX_LENGTH * 4 }),
    IsString(),
    MaxLength(PASSWORD_MAX_LENGTH * 4),
  );
