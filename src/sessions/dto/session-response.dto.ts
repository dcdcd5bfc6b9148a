import { ApiProperty } from '@nestjs/swagger';
import { IP_ADDRESS_MAX_LENGTH, USER_AGENT_MAX_LENGTH } from '../../common/client-context';
import { COUNT_SCHEMA } from '../../common/openapi-completion';
import { DEVICE_PART_MAX_LENGTH, describeDevice, DeviceSummary } from '../device';
import type { SessionEntity } from '../session.entity';

export class DeviceSummaryDto implements DeviceSummary {
  @ApiProperty({ nullable: true, type: String, maxLength: DEVICE_PART_MAX_LENGTH, example: 'Firefox 128' }) browser: string | null;
  @ApiProperty({ nullable: true, type: String, maxLength: DEVICE_PART_MAX_LENGTH, example: 'Windows 10' }) os: string | null;
  @ApiProperty({
    nullable: true,
    type: String,
    maxLength: DEVICE_PART_MAX_LENGTH,
    example: 'desktop',
    description: 'desktop, mobile, tablet, tv, bot…',
  })
  deviceType: string | null;
}

export class SessionResponseDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ format: 'date-time' }) lastSeenAt: string;
  @ApiProperty({ format: 'date-time', description: 'The idle deadline; activity moves it' }) expiresAt: string;
  @ApiProperty({ format: 'date-time', description: 'The absolute deadline; nothing moves it' }) absoluteExpiresAt: string;
  @ApiProperty({ nullable: true, type: String, maxLength: IP_ADDRESS_MAX_LENGTH }) ipAddress: string | null;
  @ApiProperty({ nullable: true, type: String, maxLength: USER_AGENT_MAX_LENGTH }) userAgent: string | null;
  @ApiProperty({ type: DeviceSummaryDto }) device: DeviceSummaryDto;
  @ApiProperty({ description: 'This is the session of the request' }) current: boolean;

  static from(session: SessionEntity, currentSessionId?: string): SessionResponseDto {
    return Object.assign(new SessionResponseDto(), {
      id: session.id,
      createdAt: session.createdAt.toISOString(),
      lastSeenAt: session.lastSeenAt.toISOString(),
      expiresAt: session.idleExpiresAt.toISOString(),
      absoluteExpiresAt: session.absoluteExpiresAt.toISOString(),
      ipAddress: session.ipAddress,
      userAgent: session.userAgent,
      device: describeDevice(session.userAgent),
      current: session.id === currentSessionId,
    });
  }
}

export class RevokedCountResponseDto {
  @ApiProperty({ ...COUNT_SCHEMA, example: 2 }) revoked: number;
}
