import { BadRequestException, Controller, Delete, Get, Param, ParseUUIDPipe, Query, UseGuards } from '@nestjs/common';
import {
  ApiBadRequestResponse,
  ApiForbiddenResponse,
  ApiNotFoundResponse,
  ApiOkResponse,
  ApiOperation,
  ApiTags,
} from '@nestjs/swagger';
import { AuditVerifierService } from '../audit/audit-verifier.service';
import { AuditService } from '../audit/audit.service';
import { AuditVerifyResponseDto } from '../audit/dto/audit-verify-response.dto';
import { toAuditQuery } from '../audit/dto/audit-query.dto';
import { Client, ClientContext } from '../common/client-context';
import { AuthContext, CurrentAuth } from '../common/current-auth.decorator';
import { AuthenticatedApi } from '../common/authenticated-api.decorator';
import { ErrorResponseDto } from '../common/error-response.dto';
import { Roles, RolesGuard } from '../common/roles';
import { RevokedCountResponseDto, SessionResponseDto } from '../sessions/dto/session-response.dto';
import { SessionsService } from '../sessions/sessions.service';
import { UsersService } from '../users/users.service';
import { AdminAuditEventResponseDto, AdminAuditPageResponseDto } from './dto/admin-audit-event-response.dto';
import { AdminAuditQueryDto } from './dto/admin-audit-query.dto';

const uuidParam = new ParseUUIDPipe({ exceptionFactory: () => new BadRequestException(['id must be a UUID']) });

@ApiTags('admin')
@AuthenticatedApi()
@ApiForbiddenResponse({ type: ErrorResponseDto, description: 'The caller is not an admin' })
@Roles('admin')
@UseGuards(RolesGuard)
@Controller('admin')
export class AdminController {
  constructor(
    private readonly users: UsersService,
    private readonly sessions: SessionsService,
    private readonly audit: AuditService,
    private readonly verifier: AuditVerifierService,
  ) {}

  @Get('users/:id/sessions')
  @ApiOperation({ operationId: 'listUserSessions', summary: "A user's active sessions, newest first" })
  @ApiOkResponse({ type: [SessionResponseDto] })
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'Not a UUID' })
  @ApiNotFoundResponse({ type: ErrorResponseDto, description: 'No such user' })
  async userSessions(@Param('id', uuidParam) userId: string, @CurrentAuth() auth: AuthContext): Promise<SessionResponseDto[]> {
    await this.users.getById(userId);
    return (await this.sessions.listActive(userId)).map((s) => SessionResponseDto.from(s, auth.sessionId));
  }

  @Delete('users/:id/sessions')
  @ApiOperation({ operationId: 'revokeUserSessions', summary: "End every active session of a user (reason revoked_by_admin)" })
  @ApiOkResponse({ type: RevokedCountResponseDto })
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'Not a UUID' })
  @ApiNotFoundResponse({ type: ErrorResponseDto, description: 'No such user' })
  async revokeUserSessions(
    @Param('id', uuidParam) userId: string,
    @CurrentAuth() auth: AuthContext,
    @Client() client: ClientContext,
  ): Promise<RevokedCountResponseDto> {
    await this.users.getById(userId);
    const ended = await this.sessions.endSessions(
      { userId },
      { reason: 'revoked_by_admin', event: 'SESSION_REVOKED', client, actorSessionId: auth.sessionId, metadata: { adminId: auth.userId } },
    );
    return { revoked: ended.length };
  }

  @Get('audit')
  @ApiOperation({ operationId: 'listAllAuditEvents', summary: "Any user's security events, newest first" })
  @ApiOkResponse({ type: AdminAuditPageResponseDto })
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'Bad filter or cursor' })
  async auditLog(@Query() query: AdminAuditQueryDto): Promise<AdminAuditPageResponseDto> {
    const page = await this.audit.list(toAuditQuery(query, query.userId));
    return { items: page.items.map(AdminAuditEventResponseDto.fromEvent), nextCursor: page.nextCursor };
  }

  @Get('audit/verify')
  @ApiOperation({
    operationId: 'verifyAuditLog',
    summary: 'Check the tamper evidence of the audit log',
    description:
      'Walks every hash chain (one per user, one for events without a user), recomputes each HMAC and link, and checks ' +
      'the chain heads against the latest checkpoint. 200 either way: `ok` says whether the log is intact, and ' +
      '`firstBrokenId` names the first broken event in chain order.',
  })
  @ApiOkResponse({ type: AuditVerifyResponseDto })
  async verifyAudit(): Promise<AuditVerifyResponseDto> {
    return AuditVerifyResponseDto.from(await this.verifier.verify());
  }
}
