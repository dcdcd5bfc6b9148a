import { Controller, Get, Query } from '@nestjs/common';
import { SessionaryRoutes } from '../common/sessionary-routes.decorator';
import { ApiBadRequestResponse, ApiOkResponse, ApiOperation, ApiTags } from '@nestjs/swagger';
import { AuthContext, CurrentAuth } from '../common/current-auth.decorator';
import { AuthenticatedApi } from '../common/authenticated-api.decorator';
import { ErrorResponseDto } from '../common/error-response.dto';
import { AuditService } from './audit.service';
import { AuditEventResponseDto, AuditPageResponseDto } from './dto/audit-event-response.dto';
import { AuditQueryDto, toAuditQuery } from './dto/audit-query.dto';

@ApiTags('audit')
@AuthenticatedApi()
// Its routes answer as API.md says whatever global filters and body parsers a host app has.
@SessionaryRoutes()
@Controller('audit')
export class AuditController {
  constructor(private readonly audit: AuditService) {}

  @Get()
  @ApiOperation({ operationId: 'listMyAuditEvents', summary: "The caller's own security events, newest first" })
  @ApiOkResponse({ type: AuditPageResponseDto })
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'Bad filter or cursor' })
  async list(@CurrentAuth() auth: AuthContext, @Query() query: AuditQueryDto): Promise<AuditPageResponseDto> {
    const page = await this.audit.list(toAuditQuery(query, auth.userId));
    return { items: page.items.map(AuditEventResponseDto.forOwner), nextCursor: page.nextCursor };
  }
}
