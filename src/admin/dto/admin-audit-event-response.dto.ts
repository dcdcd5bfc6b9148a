import { ApiProperty } from '@nestjs/swagger';
import type { AuditEventEntity } from '../../audit/audit-event.entity';
import { AuditEventResponseDto, NEXT_CURSOR_PROPERTY } from '../../audit/dto/audit-event-response.dto';
import { AUDIT_PAGE_MAX_LIMIT } from '../../audit/dto/audit-query.dto';

/** An admin sees whose event it is. */
export class AdminAuditEventResponseDto extends AuditEventResponseDto {
  @ApiProperty({ format: 'uuid', nullable: true, type: String }) userId: string | null;

  static fromEvent(e: AuditEventEntity): AdminAuditEventResponseDto {
    return Object.assign(new AdminAuditEventResponseDto(), AuditEventResponseDto.from(e), { userId: e.userId });
  }
}

export class AdminAuditPageResponseDto {
  @ApiProperty({ type: [AdminAuditEventResponseDto], maxItems: AUDIT_PAGE_MAX_LIMIT, description: 'At most `limit` events' })
  items: AdminAuditEventResponseDto[];
  @ApiProperty(NEXT_CURSOR_PROPERTY)
  nextCursor: string | null;
}
