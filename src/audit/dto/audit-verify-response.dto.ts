import { ApiProperty } from '@nestjs/swagger';
import { COUNT_SCHEMA } from '../../common/openapi-completion';
import type { AuditVerification } from '../audit-verifier.service';

export class AuditVerifyResponseDto {
  @ApiProperty({ description: 'True when every chain, head and checkpoint is intact' })
  ok: boolean;

  @ApiProperty({
    ...COUNT_SCHEMA,
    description: 'Events read from the chains: all of them; in a broken chain, those after its first break are read but not checked',
    example: 1234,
  })
  checked: number;

  @ApiProperty({
    format: 'uuid',
    nullable: true,
    type: String,
    description: 'The first broken event in chain order; null when intact, or when no stored event is to blame (e.g. a deleted tail)',
  })
  firstBrokenId: string | null;

  @ApiProperty({ nullable: true, type: String, description: 'What is broken, in words; null when intact', example: null })
  reason: string | null;

  static from(v: AuditVerification): AuditVerifyResponseDto {
    return Object.assign(new AuditVerifyResponseDto(), { ok: v.ok, checked: v.checked, firstBrokenId: v.firstBrokenId, reason: v.reason });
  }
}
