import { ApiProperty } from '@nestjs/swagger';
import { IP_ADDRESS_MAX_LENGTH, USER_AGENT_MAX_LENGTH } from '../../common/client-context';
import { AUDIT_CURSOR_PATTERN } from '../audit-cursor';
import { AUDIT_PAGE_MAX_LIMIT } from './audit-query.dto';
import { AUDIT_EVENT_TYPES, AuditEventEntity, AuditEventType, AuditMetadata } from '../audit-event.entity';

export class AuditEventResponseDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty({ enum: AUDIT_EVENT_TYPES }) type: AuditEventType;
  @ApiProperty({ format: 'uuid', nullable: true, type: String }) sessionId: string | null;
  @ApiProperty({ nullable: true, type: String, maxLength: IP_ADDRESS_MAX_LENGTH }) ipAddress: string | null;
  @ApiProperty({ nullable: true, type: String, maxLength: USER_AGENT_MAX_LENGTH }) userAgent: string | null;
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

  /**
   * An event as the user it belongs to reads it (`GET /audit`). An admin who ended the user's
   * sessions acted from their own address, browser and session: the event names the admin
   * (`adminId`, accountable) but the user is not shown the admin's IP address, user agent or
   * session id, which stay for admins and exports (and in the chain, which covers them); nor
   * the server's bcrypt costs.
   */
  static forOwner(e: AuditEventEntity): AuditEventResponseDto {
    // The server's bcrypt costs (a LOGIN that re-hashed the password) are the operator's, not the user's (until 0.24.2 shown to them).
    const { bcryptCostFrom: _from, bcryptCostTo: _to, ...own } = e.metadata;
    const event = Object.assign(AuditEventResponseDto.from(e), { metadata: own });
    if (typeof e.metadata.adminId !== 'string' || e.metadata.adminId === e.userId) return event;
    const { bySessionId: _adminsSession, ...metadata } = own;
    return Object.assign(event, { ipAddress: null, userAgent: null, metadata });
  }
}

/** A page's `nextCursor`, the same on every audit page (the user's and the admin's). */
export const NEXT_CURSOR_PROPERTY = {
  nullable: true,
  type: String,
  pattern: AUDIT_CURSOR_PATTERN.source,
  maxLength: 64,
  description: 'Pass as `cursor` for the next page; null on the last',
} as const;

export class AuditPageResponseDto {
  @ApiProperty({ type: [AuditEventResponseDto], maxItems: AUDIT_PAGE_MAX_LIMIT, description: 'At most `limit` events' })
  items: AuditEventResponseDto[];
  @ApiProperty(NEXT_CURSOR_PROPERTY)
  nextCursor: string | null;
}
