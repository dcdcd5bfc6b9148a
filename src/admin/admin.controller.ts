import {
  BadRequestException,
  Body,
  Controller,
  Delete,
  Get,
  Header,
  Logger,
  Param,
  ParseUUIDPipe,
  type PipeTransform,
  Query,
  Req,
  StreamableFile,
  UseGuards,
} from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import { SessionaryRoutes } from '../common/sessionary-routes.decorator';
import {
  ApiBadRequestResponse,
  ApiBody,
  ApiExtraModels,
  ApiForbiddenResponse,
  ApiNotFoundResponse,
  ApiOkResponse,
  ApiOperation,
  ApiTags,
  getSchemaPath,
} from '@nestjs/swagger';
import { NO_STORE_HEADERS } from '../common/cache-control.swagger';
import { AuditExportService } from '../audit/audit-export.service';
import { AuditVerifierService } from '../audit/audit-verifier.service';
import { AuditService } from '../audit/audit.service';
import { AuditExportEventLineDto, AuditExportSealLineDto } from '../audit/dto/audit-export-line.dto';
import { AuditVerifyResponseDto } from '../audit/dto/audit-verify-response.dto';
import { toAuditFilter, toAuditQuery } from '../audit/dto/audit-query.dto';
import { Client, ClientContext, routeOf } from '../common/client-context';
import { AuthContext, CurrentAuth } from '../common/current-auth.decorator';
import { AuthenticatedApi } from '../common/authenticated-api.decorator';
import { ErrorResponseDto } from '../common/error-response.dto';
import { ApiStepUpUnauthorizedResponse } from '../common/recent-auth';
import { StepUpDto } from '../users/dto/step-up.dto';
import { Roles, RolesGuard } from '../common/roles';
import { RevokedCountResponseDto, SessionResponseDto } from '../sessions/dto/session-response.dto';
import { AdminService } from './admin.service';
import { AdminAuditEventResponseDto, AdminAuditPageResponseDto } from './dto/admin-audit-event-response.dto';
import { AdminAuditExportQueryDto } from './dto/admin-audit-export-query.dto';
import { AdminAuditQueryDto } from './dto/admin-audit-query.dto';

/** NDJSON (https://github.com/ndjson/ndjson-spec): UTF-8, one JSON value a line. */
const NDJSON = 'application/x-ndjson';

const uuidParam = new ParseUUIDPipe({ exceptionFactory: () => new BadRequestException(['id must be a UUID']) });
/**
 * A user id as the database spells it (lower case): the pipe above accepts either case, and the
 * revocation locks its users' rows in the order of their ids as strings, which an upper-case id
 * put out of the database's order (two admins revoking each other could deadlock: until 0.24.2).
 */
const canonicalUuid: PipeTransform<string, string> = { transform: (id) => id.toLowerCase() };

@ApiTags('admin')
@AuthenticatedApi()
@ApiForbiddenResponse({ type: ErrorResponseDto, description: 'The caller is not an admin' })
@Roles('admin')
@UseGuards(RolesGuard)
// Its routes answer as API.md says whatever global filters and body parsers a host app has.
@SessionaryRoutes()
@Controller('admin')
export class AdminController {
  private readonly logger = new Logger(AdminController.name);

  constructor(
    private readonly admin: AdminService,
    private readonly audit: AuditService,
    private readonly verifier: AuditVerifierService,
    private readonly exporter: AuditExportService,
  ) {}

  @Get('users/:id/sessions')
  @ApiOperation({ operationId: 'listUserSessions', summary: "A user's active sessions, newest first" })
  @ApiOkResponse({ type: [SessionResponseDto] })
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'Not a UUID' })
  @ApiNotFoundResponse({ type: ErrorResponseDto, description: 'No such user' })
  async userSessions(@Param('id', uuidParam, canonicalUuid) userId: string, @CurrentAuth() auth: AuthContext): Promise<SessionResponseDto[]> {
    return (await this.admin.listUserSessions(userId)).map((s) => SessionResponseDto.from(s, auth.sessionId));
  }

  @Delete('users/:id/sessions')
  @ApiOperation({
    operationId: 'revokeUserSessions',
    summary: "End every active session of a user (reason revoked_by_admin); needs the admin's recent authentication or currentPassword",
  })
  @ApiOkResponse({ type: RevokedCountResponseDto })
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'Not a UUID, or a body with anything but a string `currentPassword`' })
  @ApiNotFoundResponse({ type: ErrorResponseDto, description: 'No such user' })
  @ApiStepUpUnauthorizedResponse(" and no currentPassword (the admin's own) is sent; or a wrong currentPassword")
  @ApiBody({ type: StepUpDto, required: false, description: "The admin's current password, instead of a recent authentication" })
  async revokeUserSessions(
    @Param('id', uuidParam, canonicalUuid) userId: string,
    @CurrentAuth() auth: AuthContext,
    @Client() client: ClientContext,
    @Req() request: FastifyRequest,
    @Body() body: StepUpDto = {},
  ): Promise<RevokedCountResponseDto> {
    return { revoked: await this.admin.revokeUserSessions(userId, auth, client, routeOf(request), body.currentPassword) };
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
      '`firstBrokenId` names the first broken event in chain order. One verification runs at a time on an instance: ' +
      'a request made while one runs waits for the next, which all requests made meanwhile share.',
  })
  @ApiOkResponse({ type: AuditVerifyResponseDto })
  async verifyAudit(): Promise<AuditVerifyResponseDto> {
    return AuditVerifyResponseDto.from(await this.verifier.verifyOneAtATime());
  }

  @Get('audit/export')
  @Header('Cache-Control', 'no-store')
  @ApiOperation({
    operationId: 'exportAuditLog',
    summary: 'Stream the audit log, or a filtered part of it, as NDJSON for offline verification',
    description:
      'One event a line in `seq` order, with its chain fields (`chainKey`, `position`, `prevHash`, `hash`) and `createdAt` to ' +
      "the microsecond, so that each line's HMAC can be recomputed; then one last line, the seal, naming the filters and " +
      'carrying a keyed MAC over the lines, so that a deleted, inserted or reordered line, or a transfer cut short, is ' +
      'detected (`npm run cli -- audit-verify --file`). Read from one consistent snapshot, a batch at a time. A failure ' +
      'after the answer started aborts the transfer instead of ending it: a client sees an incomplete response, and the ' +
      "file has no seal; so does the end of the session that asked (logout, revocation, expiry) or its admin's demotion, " +
      'found before the next batch. Each instance streams at most `AUDIT_EXPORT_MAX_CONCURRENT` exports at once (default 2); one more ' +
      'is answered 429 with `Retry-After`. With `afterSeq`, only the events after that seq, up to the newest one no ' +
      'running transaction can still precede (the seal, format v2, states it as `throughSeq`): the next export after it ' +
      'continues exactly there, so that a scheduled export ships the log to another system in pieces, none missed and none ' +
      'repeated; 503 with `Retry-After` when transactions writing events are still running after ten seconds.',
  })
  @ApiExtraModels(AuditExportEventLineDto, AuditExportSealLineDto)
  @ApiOkResponse({
    description: 'NDJSON: event lines, then the seal',
    headers: NO_STORE_HEADERS,
    content: {
      [NDJSON]: {
        schema: { oneOf: [{ $ref: getSchemaPath(AuditExportEventLineDto) }, { $ref: getSchemaPath(AuditExportSealLineDto) }] },
      },
    },
  })
  @ApiBadRequestResponse({
    type: ErrorResponseDto,
    description:
      'Bad filter: not a date, not a UUID, an unknown type, `from` after `to`, or an `afterSeq` that is not a seq or is past the newest one',
  })
  async exportAudit(@Query() query: AdminAuditExportQueryDto, @CurrentAuth() auth: AuthContext): Promise<StreamableFile> {
    // Each batch after the first waits for the session to be found still active and an admin's.
    const lines = await this.exporter.open(toAuditFilter(query, query.userId), query.afterSeq, {
      stillAllowed: () => this.admin.assertStillAdmin(auth),
    });
    // Who took a copy of whose events (addresses and browsers included) out of the service: the
    // access log names only the route, and an export writes no audit event (it changes nothing).
    this.logger.log({
      event: 'audit.export',
      adminId: auth.userId,
      sessionId: auth.sessionId,
      filters: {
        from: query.from ?? null,
        to: query.to ?? null,
        userId: query.userId ?? null,
        type: query.type ?? null,
        afterSeq: query.afterSeq ?? null,
      },
    });
    return new StreamableFile(lines, { type: NDJSON });
  }
}
