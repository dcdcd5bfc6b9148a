import { ApiProperty } from '@nestjs/swagger';
import { AUDIT_EVENT_TYPES, AuditEventEntity, AuditEventType, AuditMetadata } from '../audit-event.entity';

export class AuditEventResponseDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty({ enum: AUDIT_EVENT_TYPES }) type: AuditEventType;
  @ApiProperty({ format: 'uuid', nullable: true, type: String }) sessionId: string | null;
  @ApiProperty({ nullable: true, type: String }) ipAddress: string | null;
  @ApiProperty({ nullable: true, type: String }) userAgent: string | null;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ type: 'object', additionalProperties: true, example: { reason: 'logout' } })
  metadata: AuditMetadata;

  static from(e: AuditEventEntity): AuditEventResponseDto {
    return Object.assign(new AuditEventResponseDto(), {
      id: e.id,
      type: e.type,
      sessionId: e.sessionId,
      ipAddress: e.ipAddress,
      userAgent: e.userAgent,
      createdAt: e.createdAt.toISOString(),
      metadata: e.metadata,
    });
  }
}

export class AuditPageResponseDto {
  @ApiProperty({ type: [AuditEventResponseDto] }) items: AuditEventResponseDto[];
  @ApiProperty({ nullable: true, type: String, description: 'Pass as `cursor` for the next page; null on the last' })
  nextCursor: string | null;
}
