import { ApiPropertyOptional, PickType } from '@nestjs/swagger';
import { Matches, ValidateBy } from 'class-validator';
import { IsAbsentOr } from '../../common/validation';
import { AdminAuditQueryDto } from './admin-audit-query.dto';

/** A seq as text: 0 or a positive bigint without leading zeros (PostgreSQL's bigint is at most 2^63 - 1). */
const SEQ_PATTERN = /^(0|[1-9][0-9]{0,18})$/;
const BIGINT_MAX = 2n ** 63n - 1n;

/** The admin list's filters and their validation, without paging: an export is the whole range. */
export class AdminAuditExportQueryDto extends PickType(AdminAuditQueryDto, ['from', 'to', 'userId', 'type'] as const) {
  @ApiPropertyOptional({
    description:
      'Only events with a `seq` greater than this one, up to the newest settled one, which the seal states as `throughSeq` ' +
      '(format v2): the next export starts after it, so that consecutive exports ship the log once, none missed and none ' +
      'repeated. 0 for the first',
    example: '0',
    pattern: SEQ_PATTERN.source,
    maxLength: 19,
  })
  @IsAbsentOr()
  @Matches(SEQ_PATTERN, { message: 'afterSeq must be a seq: 0 or a positive integer, in decimal' })
  @ValidateBy({
    name: 'isBigint',
    validator: {
      validate: (value: unknown) => typeof value !== 'string' || !SEQ_PATTERN.test(value) || BigInt(value) <= BIGINT_MAX,
      defaultMessage: () => `afterSeq must be at most ${BIGINT_MAX}`,
    },
  })
  afterSeq?: string;
}
