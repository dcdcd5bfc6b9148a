import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { IP_ADDRESS_MAX_LENGTH, USER_AGENT_MAX_LENGTH } from '../../common/client-context';
import { COUNT_SCHEMA } from '../../common/openapi-completion';
import { AUDIT_EVENT_TYPES } from '../audit-event.entity';
import {
  EXPORT_FORMAT,
  EXPORT_FORMAT_RANGED,
  type AuditExportFilterFields,
  type AuditExportLine,
  type AuditExportSeal,
} from '../audit-export-format';

/*
 * The OpenAPI description of the export's lines (application/x-ndjson: one of these per line).
 * The lines themselves are built by audit-export-format.ts; `implements` keeps these in step.
 */

/** A seq as the seal states it: a 64-bit integer, as a decimal string (0 before the first event). */
const SEQ_TEXT = { type: String, pattern: '^(0|[1-9][0-9]{0,18})$', maxLength: 19, example: '1042' } as const;

export class AuditExportEventLineDto implements AuditExportLine {
  @ApiProperty({
    description: 'The global order of events (a 64-bit integer, as a decimal string)',
    example: '1042',
    pattern: '^[1-9][0-9]{0,18}$',
    maxLength: 19,
  })
  seq: string;

  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty({ enum: AUDIT_EVENT_TYPES }) type: string;
  @ApiProperty({ format: 'uuid', nullable: true, type: String }) userId: string | null;
  @ApiProperty({ format: 'uuid', nullable: true, type: String }) sessionId: string | null;
  @ApiProperty({ nullable: true, type: String, maxLength: IP_ADDRESS_MAX_LENGTH }) ipAddress: string | null;
  @ApiProperty({ nullable: true, type: String, maxLength: USER_AGENT_MAX_LENGTH }) userAgent: string | null;

  @ApiProperty({ format: 'date-time', description: 'UTC to the microsecond: the exact text the HMAC covers', example: '2026-12-01T12:00:00.123456Z' })
  createdAt: string;

  @ApiProperty({ type: 'object', additionalProperties: true, example: { reason: 'logout' } })
  metadata: unknown;

  @ApiProperty({
    nullable: true,
    type: String,
    pattern: '^(global|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$',
    maxLength: 36,
    description: "The chain: the user's id, or `global` for events without a user; null for an event outside every chain",
  })
  chainKey: string | null;

  @ApiProperty({ ...COUNT_SCHEMA, nullable: true, minimum: 1, description: 'Position in the chain, from 1' })
  position: number | null;

  @ApiProperty({
    nullable: true,
    type: String,
    pattern: '^[0-9a-f]{64}$',
    maxLength: 64,
    description: "The previous event's hash in the chain (64 zeros at position 1)",
  })
  prevHash: string | null;

  @ApiProperty({
    nullable: true,
    type: String,
    pattern: '^[0-9a-f]{64}$',
    maxLength: 64,
    description: 'HMAC-SHA-256(AUDIT_HMAC_KEY, prevHash ‖ canonical form of the event)',
  })
  hash: string | null;
}

export class AuditExportFilterDto implements AuditExportFilterFields {
  @ApiProperty({ format: 'date-time', nullable: true, type: String }) from: string | null;
  @ApiProperty({ format: 'date-time', nullable: true, type: String }) to: string | null;
  @ApiProperty({ format: 'uuid', nullable: true, type: String }) userId: string | null;
  @ApiProperty({ enum: AUDIT_EVENT_TYPES, nullable: true, type: String }) type: string | null;

  @ApiPropertyOptional({
    ...SEQ_TEXT,
    description: 'Format v2 only: the export holds the events after this seq (the `afterSeq` query parameter)',
  })
  afterSeq?: string;
}

export class AuditExportSealLineDto implements AuditExportSeal {
  @ApiProperty({
    enum: [EXPORT_FORMAT, EXPORT_FORMAT_RANGED],
    description: 'The format; marks the last line. v2 for an export after a seq (`afterSeq`), whose seal states `throughSeq`; v1 otherwise',
  })
  seal: string;

  @ApiProperty({ type: AuditExportFilterDto, description: 'The filters of this export' })
  filter: AuditExportFilterDto;

  @ApiPropertyOptional({
    ...SEQ_TEXT,
    description:
      'Format v2 only: the file holds every event the filters select with a seq after `filter.afterSeq` and up to this one; ' +
      'the next export takes it as its `afterSeq`',
  })
  throughSeq?: string;

  @ApiProperty({ ...COUNT_SCHEMA, description: 'Event lines before the seal' })
  lines: number;

  @ApiProperty({ pattern: '^[0-9a-f]{64}$', maxLength: 64, description: "SHA-256 over every line's seq and hash, in order" })
  digest: string;

  @ApiProperty({ pattern: '^[0-9a-f]{64}$', maxLength: 64, description: 'HMAC-SHA-256(AUDIT_HMAC_KEY) over the other fields' })
  mac: string;
}
