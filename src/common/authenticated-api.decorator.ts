import { applyDecorators } from '@nestjs/common';
import { ApiBearerAuth, ApiUnauthorizedResponse } from '@nestjs/swagger';
import { BEARER_CHALLENGE_HEADER } from './bearer-challenge';
import { ErrorResponseDto } from './error-response.dto';

/** Swagger for a controller behind SessionGuard: bearer auth and its 401. */
export const AuthenticatedApi = () =>
  applyDecorators(
    ApiBearerAuth(),
    ApiUnauthorizedResponse({
      type: ErrorResponseDto,
      description: 'No valid access token, or the session has ended',
      headers: {
        'WWW-Authenticate': BEARER_CHALLENGE_HEADER,
      },
    }),
  );
