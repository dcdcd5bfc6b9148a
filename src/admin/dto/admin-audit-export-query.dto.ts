import { PickType } from '@nestjs/swagger';
import { AdminAuditQueryDto } from './admin-audit-query.dto';

/** The admin list's filters and their validation, without paging: an export is the whole range. */
export class AdminAuditExportQueryDto extends PickType(AdminAuditQueryDto, ['from', 'to', 'userId', 'type'] as const) {}
