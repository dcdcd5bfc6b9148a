import { BadRequestException } from '@nestjs/common';
import { ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import { IsIn, IsInt, IsString, Matches, Max, MaxLength, Min } from 'class-validator';
import { IsAbsentOr } from '../../common/validation';
import { AUDIT_EVENT_TYPES, AuditEventType } from '../audit-event.entity';
import { AUDIT_CURSOR_PATTERN } from '../audit-cursor';
import type { AuditFilter, AuditQuery } from '../audit.service';

// RFC 3339 (a profile of ISO 8601): a date, or a date-time with a zone. Week dates, ordinal
// dates and signed years are ISO 8601 too, but not instants anyone means here.
const RFC3339 = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?$/i;
/** The longest text RFC3339 matches: `2026-01-01T00:00:00.123456789+02:00`. */
const RFC3339_MAX_LENGTH = 35;

/** The largest page of events. */
export const AUDIT_PAGE_MAX_LIMIT = 100;

export class AuditQueryDto {
  @ApiPropertyOptional({ enum: AUDIT_EVENT_TYPES })
  @IsAbsentOr()
  @IsIn(AUDIT_EVENT_TYPES)
  type?: AuditEventType;

  @ApiPropertyOptional({
    description: 'Events at or after this instant (RFC 3339 date or date-time)',
    example: '2026-01-01T00:00:00Z',
    pattern: RFC3339.source,
    maxLength: RFC3339_MAX_LENGTH,
  })
  @IsAbsentOr()
  @Matches(RFC3339, { message: 'from must be an RFC 3339 date or date-time' })
  from?: string;

  @ApiPropertyOptional({
    description: 'Events before this instant (RFC 3339 date or date-time)',
    example: '2026-12-31T00:00:00Z',
    pattern: RFC3339.source,
    maxLength: RFC3339_MAX_LENGTH,
  })
  @IsAbsentOr()
  @Matches(RFC3339, { message: 'to must be an RFC 3339 date or date-time' })
  to?: string;

  @ApiPropertyOptional({ type: 'integer', format: 'int32', minimum: 1, maximum: AUDIT_PAGE_MAX_LIMIT, default: 20 })
  @IsAbsentOr()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(AUDIT_PAGE_MAX_LIMIT)
  limit: number = 20;

  // The pattern is checked when the cursor is decoded (AuditService): anything else is a 400 too.
  @ApiPropertyOptional({ description: 'nextCursor of the previous page', maxLength: 64, pattern: AUDIT_CURSOR_PATTERN.source })
  @IsAbsentOr()
  @IsString()
  @MaxLength(64)
  cursor?: string;
}

/** The service's query from a validated DTO; `from` after `to` is a 400. */
export function toAuditQuery(dto: AuditQueryDto, userId: string | undefined): AuditQuery {
  return { ...toAuditFilter(dto, userId), limit: dto.limit, cursor: dto.cursor };
}

/** The filters alone (the export's), with the same checks: a date that does not exist, or `from` after `to`, is a 400. */
export function toAuditFilter(dto: Pick<AuditQueryDto, 'type' | 'from' | 'to'>, userId: string | undefined): AuditFilter {
  const from = dto.from === undefined ? undefined : instantOf(dto.from);
  const to = dto.to === undefined ? undefined : instantOf(dto.to);
  // The pattern admits 2026-02-31 or 25:00; a date that does not exist is a 400 too.
  if (from === null) throw new BadRequestException(['from is not a valid date']);
  if (to === null) throw new BadRequestException(['to is not a valid date']);
  if (from && to && from > to) throw new BadRequestException(['from must not be after to']);
  return { userId, type: dto.type, from, to };
}

/**
 * The instant an RFC 3339 text names, or null when its date or time does not exist. Date's
 * parser refuses a month 13 or an hour 25, but rolls a day past the month's end and an hour
 * of 24 over (2026-02-31 is March 3, T24:00 the next day's midnight).
 */
function instantOf(text: string): Date | null {
  const date = new Date(text);
  const [, year, month, day, hour] = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}))?/i.exec(text) ?? [];
  if (Number.isNaN(date.getTime()) || year === undefined || Number(hour ?? 0) > 23) return null;
  const lastDay = new Date(0);
  lastDay.setUTCFullYear(Number(year), Number(month), 0); // day 0 of the next month
  return Number(day) >= 1 && Number(day) <= lastDay.getUTCDate() ? date : null;
}
