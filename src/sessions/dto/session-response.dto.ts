import { ApiProperty } from '@nestjs/swagger';
import { describeDevice, DeviceSummary } from '../device';
import type { SessionEntity } from '../session.entity';

export class DeviceSummaryDto implements DeviceSummary {
  @ApiProperty({ nullable: true, type: String, example: 'Firefox 128' }) browser: string | null;
  @ApiProperty({ nullable: true, type: String, example: 'Windows 10' }) os: string | null;
  @ApiProperty({ nullable: true, type: String, example: 'desktop', description: 'desktop, mobile, tablet, tv, bot…' })
  deviceType: string | null;
}

export class SessionResponseDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ format: 'date-time' }) lastSeenAt: string;
  @ApiProperty({ format: 'date-time', description: 'The idle deadline; activity moves it' }) expiresAt: string;
  @ApiProperty({ format: 'date-time', description: 'The absolute deadline; nothing moves it' }) absoluteExpiresAt: string;
  @ApiProperty({ nullable: true, type: String }) ipAddress: string | null;
  @ApiProperty({ nullable: true, type: String }) userAgent: string | null;
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
  @ApiProperty({ example: 2 }) revoked: number;
}
