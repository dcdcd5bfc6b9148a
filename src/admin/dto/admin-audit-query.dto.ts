import { ApiPropertyOptional } from '@nestjs/swagger';
import { IsUUID } from 'class-validator';
import { IsAbsentOr } from '../../common/validation';
import { AuditQueryDto } from '../../audit/dto/audit-query.dto';

export class AdminAuditQueryDto extends AuditQueryDto {
  @ApiPropertyOptional({ format: 'uuid', description: "Only this user's events" })
  @IsAbsentOr()
  @IsUUID()
  userId?: string;
}
