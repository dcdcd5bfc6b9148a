import { BadRequestException } from '@nestjs/common';
import { ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import { IsIn, IsInt, IsISO8601, IsOptional, IsString, Max, MaxLength, Min } from 'class-validator';
import { AUDIT_EVENT_TYPES, AuditEventType } from '../audit-event.entity';
import type { AuditQuery } from '../audit.service';

export class AuditQueryDto {
  @ApiPropertyOptional({ enum: AUDIT_EVENT_TYPES })
  @IsOptional()
  @IsIn(AUDIT_EVENT_TYPES)
  type?: AuditEventType;

  @ApiPropertyOptional({ description: 'Events at or after this instant (ISO-8601)', example: '2026-01-01T00:00:00Z' })
  @IsOptional()
  @IsISO8601({ strict: true, strictSeparator: true })
  from?: string;

  @ApiPropertyOptional({ description: 'Events before this instant (ISO-8601)' })
  @IsOptional()
  @IsISO8601({ strict: true, strictSeparator: true })
  to?: string;

  @ApiPropertyOptional({ minimum: 1, maximum: 100, default: 20 })
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(100)
  limit: number = 20;

  @ApiPropertyOptional({ description: 'nextCursor of the previous page' })
  @IsOptional()
  @IsString()
  @MaxLength(64)
  cursor?: string;
}

/** The service's query from a validated DTO; `from` after `to` is a 400. */
export function toAuditQuery(dto: AuditQueryDto, userId: string | undefined): AuditQuery {
  const from = dto.from ? new Date(dto.from) : undefined;
  const to = dto.to ? new Date(dto.to) : undefined;
  if (from && to && from > to) throw new BadRequestException(['from must not be after to']);
  return { userId, type: dto.type, from, to, limit: dto.limit, cursor: dto.cursor };
}
