import { applyDecorators } from '@nestjs/common';
import { ApiBearerAuth, ApiUnauthorizedResponse } from '@nestjs/swagger';
import { ErrorResponseDto } from './error-response.dto';

/** Swagger for a controller behind SessionGuard: bearer auth and its 401. */
export const AuthenticatedApi = () =>
  applyDecorators(
    ApiBearerAuth(),
    ApiUnauthorizedResponse({
      type: ErrorResponseDto,
      description: 'No valid access token, or the session has ended',
      headers: {
        'WWW-Authenticate': {
          description: 'RFC 6750: `Bearer` without a token, `Bearer error="invalid_token"` for a refused one',
          // The two challenges bearerChallenge() writes.
          schema: { type: 'string', enum: ['Bearer', 'Bearer error="invalid_token"'] },
        },
      },
    }),
  );
