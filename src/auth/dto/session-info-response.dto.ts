import { ApiProperty } from '@nestjs/swagger';
import type { AuthContext } from '../../common/current-auth.decorator';
import { isoTime } from '../../common/iso-time';
import type { UserRole } from '../../users/user.entity';

/** GET /auth/session: who the bearer is, for services that check a token on every request. */
export class SessionInfoResponseDto {
  @ApiProperty({ format: 'uuid' }) userId: string;
  @ApiProperty({ format: 'uuid' }) sessionId: string;
  @ApiProperty({ enum: ['user', 'admin'] }) role: UserRole;
  @ApiProperty({
    format: 'date-time',
    description: 'Idle deadline as the answering instance knows it: never later than the stored one, which activity on any instance moves later',
  })
  expiresAt: string;
  @ApiProperty({ format: 'date-time', description: 'Absolute deadline; nothing extends it' })
  absoluteExpiresAt: string;

  static from(auth: AuthContext): SessionInfoResponseDto {
    return {
      userId: auth.userId,
      sessionId: auth.sessionId,
      role: auth.role,
      expiresAt: isoTime(auth.expiresAt),
      absoluteExpiresAt: isoTime(auth.absoluteExpiresAt),
    };
  }
}
