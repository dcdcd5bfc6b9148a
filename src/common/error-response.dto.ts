import { ApiProperty } from '@nestjs/swagger';

/** The one error shape (Nest's), for the Swagger document. */
export class ErrorResponseDto {
  @ApiProperty({ type: 'integer', format: 'int32', minimum: 400, maximum: 599, example: 400 }) statusCode: number;
  @ApiProperty({ example: 'Bad Request' }) error: string;
  @ApiProperty({ oneOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }], example: ['email must be an email'] })
  message: string | string[];
}
