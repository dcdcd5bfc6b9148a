import { Body, Controller, Get, Header, HttpCode, HttpStatus, Post } from '@nestjs/common';
import { SessionaryRoutes } from '../common/sessionary-routes.decorator';
import {
  ApiBadRequestResponse,
  ApiBearerAuth,
  ApiBody,
  ApiConflictResponse,
  ApiCreatedResponse,
  ApiNoContentResponse,
  ApiOkResponse,
  ApiOperation,
  ApiTags,
  ApiTooManyRequestsResponse,
  ApiUnauthorizedResponse,
} from '@nestjs/swagger';
import { BEARER_CHALLENGE_HEADER, CREDENTIALS_CHALLENGE_HEADER } from '../common/bearer-challenge';
import { NO_STORE_HEADERS } from '../common/cache-control.swagger';
import { Client, ClientContext } from '../common/client-context';
import { AuthContext, CurrentAuth } from '../common/current-auth.decorator';
import { ErrorResponseDto } from '../common/error-response.dto';
import { Public } from '../common/public.decorator';
import { RegisteredUserResponseDto } from '../users/dto/user-response.dto';
import { AuthService } from './auth.service';
import { LOGIN_EXAMPLES, LoginDto } from './dto/login.dto';
import { ReauthenticateDto } from './dto/reauthenticate.dto';
import { RefreshDto } from './dto/refresh.dto';
import { SessionInfoResponseDto } from './dto/session-info-response.dto';
import { RegisterDto } from './dto/register.dto';
import { TokenResponseDto } from './dto/token-response.dto';

@ApiTags('auth')
// Its routes answer as API.md says whatever global filters and body parsers a host app has.
@SessionaryRoutes()
@Controller('auth')
export class AuthController {
  constructor(private readonly auth: AuthService) {}

  @Public()
  @Post('register')
  @ApiOperation({ operationId: 'register', summary: 'Create an account' })
  @ApiCreatedResponse({ type: RegisteredUserResponseDto })
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'Invalid field (named in message)' })
  @ApiConflictResponse({ type: ErrorResponseDto, description: 'Username or email is already taken (one message for both)' })
  @ApiTooManyRequestsResponse({
    type: ErrorResponseDto,
    description:
      'Too many registrations from this IP (REGISTER_MAX_PER_IP within REGISTER_WINDOW) or, when REGISTER_MAX_TOTAL is set, from everyone together; or too many requests; see Retry-After',
  })
  async register(@Body() dto: RegisterDto, @Client() client: ClientContext): Promise<RegisteredUserResponseDto> {
    return RegisteredUserResponseDto.fromUser(await this.auth.register(dto, client));
  }

  @Public()
  @Post('login')
  @HttpCode(HttpStatus.OK)
  @Header('Cache-Control', 'no-store')
  @ApiOperation({ operationId: 'login', summary: 'Log in by email or username; opens a session' })
  @ApiBody({ type: LoginDto, description: 'Exactly one of `email` or `username`, and the password', examples: LOGIN_EXAMPLES })
  @ApiOkResponse({ type: TokenResponseDto, headers: NO_STORE_HEADERS })
  @ApiBadRequestResponse({ type: ErrorResponseDto })
  @ApiUnauthorizedResponse({
    type: ErrorResponseDto,
    description: 'Invalid credentials (same for unknown account and wrong password)',
    headers: { 'WWW-Authenticate': CREDENTIALS_CHALLENGE_HEADER },
  })
  @ApiTooManyRequestsResponse({ type: ErrorResponseDto, description: 'Too many failed logins for this identifier or IP; see Retry-After' })
  login(@Body() dto: LoginDto, @Client() client: ClientContext): Promise<TokenResponseDto> {
    return this.auth.login(dto, client);
  }

  @Public()
  @Post('refresh')
  @HttpCode(HttpStatus.OK)
  @Header('Cache-Control', 'no-store')
  @ApiOperation({ operationId: 'refresh', summary: 'Exchange a refresh token for a new pair; a reused token ends the session' })
  @ApiOkResponse({ type: TokenResponseDto, headers: NO_STORE_HEADERS })
  @ApiBadRequestResponse({ type: ErrorResponseDto })
  @ApiUnauthorizedResponse({
    type: ErrorResponseDto,
    description: 'Unknown, expired, revoked or already used refresh token',
    headers: { 'WWW-Authenticate': CREDENTIALS_CHALLENGE_HEADER },
  })
  refresh(@Body() dto: RefreshDto, @Client() client: ClientContext): Promise<TokenResponseDto> {
    return this.auth.refresh(dto.refreshToken, client);
  }

  /**
   * Whoami for other services, called on every request of theirs: answered by the session
   * check alone (the per-instance cache in steady state), so it runs no SQL.
   */
  @Get('session')
  @Header('Cache-Control', 'no-store')
  @ApiBearerAuth()
  @ApiOperation({ operationId: 'getSession', summary: "The bearer's active session: who it is and until when" })
  @ApiOkResponse({ type: SessionInfoResponseDto, headers: NO_STORE_HEADERS })
  @ApiUnauthorizedResponse({
    type: ErrorResponseDto,
    description: 'No valid access token, or the session has ended',
    headers: { 'WWW-Authenticate': BEARER_CHALLENGE_HEADER },
  })
  session(@CurrentAuth() auth: AuthContext): SessionInfoResponseDto {
    return SessionInfoResponseDto.from(auth);
  }

  @Post('reauthenticate')
  @HttpCode(HttpStatus.OK)
  @Header('Cache-Control', 'no-store')
  @ApiBearerAuth()
  @ApiOperation({
    operationId: 'reauthenticate',
    summary: 'Prove the password again (step-up, RFC 9470): the session goes on with a fresh auth_time and a new token pair',
    description:
      'For the actions that need an authentication younger than REAUTH_MAX_AGE (ending other sessions, an admin revoking ' +
      "a user's sessions, an email change without currentPassword), which otherwise answer 401 with " +
      '`WWW-Authenticate: Bearer error="insufficient_user_authentication"`. Retry them with the new access token. The ' +
      'previous refresh token stops working: presenting it again is reuse and ends the session.',
  })
  @ApiOkResponse({ type: TokenResponseDto, headers: NO_STORE_HEADERS })
  @ApiBadRequestResponse({ type: ErrorResponseDto })
  @ApiUnauthorizedResponse({
    type: ErrorResponseDto,
    description: 'Wrong password (audited as LOGIN_FAILED, no change), no valid access token, or the session has ended',
    headers: { 'WWW-Authenticate': BEARER_CHALLENGE_HEADER },
  })
  @ApiTooManyRequestsResponse({ type: ErrorResponseDto, description: 'Too many wrong passwords for this account or IP; see Retry-After' })
  reauthenticate(@CurrentAuth() auth: AuthContext, @Body() dto: ReauthenticateDto, @Client() client: ClientContext): Promise<TokenResponseDto> {
    return this.auth.reauthenticate(auth, dto, client);
  }

  @Post('logout')
  @HttpCode(HttpStatus.NO_CONTENT)
  @ApiBearerAuth()
  @ApiOperation({ operationId: 'logout', summary: 'End the current session; its access and refresh tokens stop working at once' })
  @ApiNoContentResponse()
  @ApiUnauthorizedResponse({
    type: ErrorResponseDto,
    description: 'No valid access token, or the session has ended',
    headers: { 'WWW-Authenticate': BEARER_CHALLENGE_HEADER },
  })
  logout(@CurrentAuth() auth: AuthContext, @Client() client: ClientContext): Promise<void> {
    return this.auth.logout(auth, client);
  }
}
