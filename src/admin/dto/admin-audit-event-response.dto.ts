import { ApiProperty } from '@nestjs/swagger';
import type { AuditEventEntity } from '../../audit/audit-event.entity';
import { AuditEventResponseDto } from '../../audit/dto/audit-event-response.dto';

/** An admin sees whose event it is. */
export class AdminAuditEventResponseDto extends AuditEventResponseDto {
  @ApiProperty({ format: 'uuid', nullable: true, type: String }) userId: string | null;

  static fromEvent(e: AuditEventEntity): AdminAuditEventResponseDto {
    return Object.assign(new AdminAuditEventResponseDto(), AuditEventResponseDto.from(e), { userId: e.userId });
  }
}

export class AdminAuditPageResponseDto {
  @ApiProperty({ type: [AdminAuditEventResponseDto] }) items: AdminAuditEventResponseDto[];
  @ApiProperty({ nullable: true, type: String }) nextCursor: string | null;
}
