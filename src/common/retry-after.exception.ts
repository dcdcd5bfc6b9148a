import { HttpException, HttpStatus } from '@nestjs/common';

/** A 429 that tells when to come back; the exception filter sends `Retry-After`. */
export class RetryAfterException extends HttpException {
  constructor(
    readonly retryAfterSeconds: number,
    message: string,
  ) {
    super({ statusCode: 429, error: 'Too Many Requests', message }, HttpStatus.TOO_MANY_REQUESTS);
  }
}
