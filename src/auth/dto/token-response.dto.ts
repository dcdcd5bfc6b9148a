import { ApiProperty } from '@nestjs/swagger';
import { INT32_MAX } from '../../config/env.schema';
import { REFRESH_TOKEN_LENGTH, REFRESH_TOKEN_PATTERN } from '../../sessions/refresh-token';

export class TokenResponseDto {
  // A signed JWT in compact form: three base64url parts. No maxLength: it carries JWT_ISSUER and
  // JWT_AUDIENCE, whose lengths are the deployment's (see .spectral.yaml).
  @ApiProperty({ description: 'JWT (typ at+jwt) for `Authorization: Bearer`', pattern: '^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$' })
  accessToken: string;

  @ApiProperty({
    description: 'Opaque; exchange it once at /auth/refresh for a new pair',
    pattern: REFRESH_TOKEN_PATTERN.source,
    minLength: REFRESH_TOKEN_LENGTH,
    maxLength: REFRESH_TOKEN_LENGTH,
  })
  refreshToken: string;

  @ApiProperty({ enum: ['Bearer'] }) tokenType: 'Bearer';

  // ACCESS_TOKEN_TTL at most, and less when the session's absolute deadline comes first.
  @ApiProperty({
    type: 'integer',
    format: 'int32',
    minimum: 1,
    maximum: INT32_MAX,
    description: 'Seconds until the access token expires',
    example: 900,
  })
  expiresIn: number;
  @ApiProperty({ format: 'uuid' }) sessionId: string;
  @ApiProperty({ format: 'date-time', description: "The session's absolute deadline: no refresh extends it" })
  sessionExpiresAt: string;
}
