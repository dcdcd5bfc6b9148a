import { ApiPropertyOptional } from '@nestjs/swagger';
import { IsOptional, IsUUID } from 'class-validator';
import { AuditQueryDto } from '../../audit/dto/audit-query.dto';

export class AdminAuditQueryDto extends AuditQueryDto {
  @ApiPropertyOptional({ format: 'uuid', description: "Only this user's events" })
  @IsOptional()
  @IsUUID()
  userId?: string;
}
