import { ApiProperty } from '@nestjs/swagger';

export class TokenResponseDto {
  @ApiProperty({ description: 'JWT (typ at+jwt) for `Authorization: Bearer`' }) accessToken: string;
  @ApiProperty({ description: 'Opaque; exchange it once at /auth/refresh for a new pair' }) refreshToken: string;
  @ApiProperty({ enum: ['Bearer'] }) tokenType: 'Bearer';
  @ApiProperty({ type: 'integer', description: 'Seconds until the access token expires', example: 900 }) expiresIn: number;
  @ApiProperty({ format: 'uuid' }) sessionId: string;
  @ApiProperty({ format: 'date-time', description: "The session's absolute deadline: no refresh extends it" })
  sessionExpiresAt: string;
}
