import { BadRequestException, Body, Controller, Delete, Get, HttpCode, HttpStatus, Param, ParseUUIDPipe, Req } from '@nestjs/common';
import { SessionaryRoutes } from '../common/sessionary-routes.decorator';
import type { FastifyRequest } from 'fastify';
import { ApiBadRequestResponse, ApiBody, ApiNoContentResponse, ApiNotFoundResponse, ApiOkResponse, ApiOperation, ApiTags } from '@nestjs/swagger';
import { Client, ClientContext, routeOf } from '../common/client-context';
import { AuthContext, CurrentAuth } from '../common/current-auth.decorator';
import { AuthenticatedApi } from '../common/authenticated-api.decorator';
import { ErrorResponseDto } from '../common/error-response.dto';
import { ApiStepUpUnauthorizedResponse } from '../common/recent-auth';
import { StepUpDto } from '../users/dto/step-up.dto';
import { RevokedCountResponseDto, SessionResponseDto } from './dto/session-response.dto';
import { UserSessionsService } from './user-sessions.service';

@ApiTags('sessions')
@AuthenticatedApi()
// Its routes answer as API.md says whatever global filters and body parsers a host app has.
@SessionaryRoutes()
@Controller('sessions')
export class SessionsController {
  constructor(private readonly sessions: UserSessionsService) {}

  @Get()
  @ApiOperation({ operationId: 'listSessions', summary: "The caller's active sessions, newest first" })
  @ApiOkResponse({ type: [SessionResponseDto] })
  async list(@CurrentAuth() auth: AuthContext): Promise<SessionResponseDto[]> {
    const sessions = await this.sessions.listActive(auth.userId);
    return sessions.map((s) => SessionResponseDto.from(s, auth.sessionId));
  }

  @Delete(':id')
  @HttpCode(HttpStatus.NO_CONTENT)
  @ApiOperation({
    operationId: 'revokeSession',
    summary: 'End one of my sessions (the current one too: that is a logout); another one needs a recent authentication',
  })
  @ApiNoContentResponse({ description: "The session's access and refresh tokens no longer work" })
  @ApiStepUpUnauthorizedResponse(
    ' and no currentPassword is sent (only to end another session: ending the current one is a logout); or a wrong currentPassword',
  )
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'Not a UUID, or a body with anything but a string `currentPassword`' })
  @ApiNotFoundResponse({ type: ErrorResponseDto, description: 'Unknown, already ended, or not yours (one identical answer)' })
  @ApiBody({ type: StepUpDto, required: false, description: 'The current password, instead of a recent authentication (ending another session)' })
  async revoke(
    @CurrentAuth() auth: AuthContext,
    @Param('id', new ParseUUIDPipe({ exceptionFactory: () => new BadRequestException(['id must be a UUID']) })) id: string,
    @Client() client: ClientContext,
    @Req() request: FastifyRequest,
    @Body() body: StepUpDto = {},
  ): Promise<void> {
    await this.sessions.revokeOwn(auth, id, client, routeOf(request), body.currentPassword);
  }

  @Delete()
  @ApiOperation({
    operationId: 'revokeOtherSessions',
    summary: 'End every session of mine except the current one; needs a recent authentication or currentPassword',
  })
  @ApiOkResponse({ type: RevokedCountResponseDto })
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'A body with anything but a string `currentPassword`' })
  @ApiStepUpUnauthorizedResponse(' and no currentPassword is sent; or a wrong currentPassword')
  @ApiBody({ type: StepUpDto, required: false, description: 'The current password, instead of a recent authentication' })
  async revokeOthers(
    @CurrentAuth() auth: AuthContext,
    @Client() client: ClientContext,
    @Body() body: StepUpDto = {},
  ): Promise<RevokedCountResponseDto> {
    return { revoked: await this.sessions.revokeOthers(auth, client, body.currentPassword) };
  }
}
