import { ArgumentMetadata, BadRequestException, HttpException, Injectable, ValidationPipe } from '@nestjs/common';
import { isEmail, registerDecorator, ValidateIf, ValidationOptions } from 'class-validator';

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
 * The global pipe: whitelist, forbid unknown properties, transform. Should a validator throw
 * instead of answering (a library bug on odd input), the request is still bad input: 400, not 500.
 */
@Injectable()
export class AppValidationPipe extends ValidationPipe {
  constructor() {
    super({ whitelist: true, forbidNonWhitelisted: true, transform: true, forbidUnknownValues: true });
  }

  override async transform(value: unknown, metadata: ArgumentMetadata): Promise<unknown> {
    try {
      return await super.transform(value, metadata);
    } catch (error) {
      if (error instanceof HttpException) throw error;
      throw new BadRequestException(`Invalid ${metadata.type === 'custom' ? 'input' : metadata.type}`);
    }
  }
}
