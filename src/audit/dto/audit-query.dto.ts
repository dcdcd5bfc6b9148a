import { BadRequestException } from '@nestjs/common';
import { ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import { IsIn, IsInt, IsString, Matches, Max, MaxLength, Min } from 'class-validator';
import { IsAbsentOr } from '../../common/validation';
import { AUDIT_EVENT_TYPES, AuditEventType } from '../audit-event.entity';
import type { AuditQuery } from '../audit.service';

// RFC 3339 (a profile of ISO 8601): a date, or a date-time with a zone. Week dates, ordinal
// dates and signed years are ISO 8601 too, but not instants anyone means here.
const RFC3339 = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?$/i;

export class AuditQueryDto {
  @ApiPropertyOptional({ enum: AUDIT_EVENT_TYPES })
  @IsAbsentOr()
  @IsIn(AUDIT_EVENT_TYPES)
  type?: AuditEventType;

  @ApiPropertyOptional({ description: 'Events at or after this instant (RFC 3339 date or date-time)', example: '2026-01-01T00:00:00Z', pattern: RFC3339.source })
  @IsAbsentOr()
  @Matches(RFC3339, { message: 'from must be an RFC 3339 date or date-time' })
  from?: string;

  @ApiPropertyOptional({ description: 'Events before this instant (RFC 3339 date or date-time)', example: '2026-12-31T00:00:00Z', pattern: RFC3339.source })
  @IsAbsentOr()
  @Matches(RFC3339, { message: 'to must be an RFC 3339 date or date-time' })
  to?: string;

  @ApiPropertyOptional({ type: 'integer', minimum: 1, maximum: 100, default: 20 })
  @IsAbsentOr()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(100)
  limit: number = 20;

  @ApiPropertyOptional({ description: 'nextCursor of the previous page', maxLength: 64 })
  @IsAbsentOr()
  @IsString()
  @MaxLength(64)
  cursor?: string;
}

/** The service's query from a validated DTO; `from` after `to` is a 400. */
export function toAuditQuery(dto: AuditQueryDto, userId: string | undefined): AuditQuery {
  const from = dto.from ? new Date(dto.from) : undefined;
  const to = dto.to ? new Date(dto.to) : undefined;
  // The pattern admits 2026-02-31 or 25:00; a date that does not exist is a 400 too.
  if (from && Number.isNaN(from.getTime())) throw new BadRequestException(['from is not a valid date']);
  if (to && Number.isNaN(to.getTime())) throw new BadRequestException(['to is not a valid date']);
  if (from && to && from > to) throw new BadRequestException(['from must not be after to']);
  return { userId, type: dto.type, from, to, limit: dto.limit, cursor: dto.cursor };
}
