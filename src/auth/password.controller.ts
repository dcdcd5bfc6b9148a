import { Body, Controller, HttpCode, HttpStatus, Put } from '@nestjs/common';
import { SessionaryRoutes } from '../common/sessionary-routes.decorator';
import {
  ApiBadRequestResponse,
  ApiBearerAuth,
  ApiNoContentResponse,
  ApiOperation,
  ApiTags,
  ApiTooManyRequestsResponse,
  ApiUnauthorizedResponse,
} from '@nestjs/swagger';
import { BEARER_CHALLENGE_HEADER } from '../common/bearer-challenge';
import { Client, ClientContext } from '../common/client-context';
import { AuthContext, CurrentAuth } from '../common/current-auth.decorator';
import { ErrorResponseDto } from '../common/error-response.dto';
import { AuthService } from './auth.service';
import { ChangePasswordDto } from './dto/change-password.dto';

/**
 * Lives in AuthModule although its path is under /users/me: changing a password ends
 * sessions, and users may not depend on sessions (sessions depend on users).
 */
@ApiTags('users')
@ApiBearerAuth()
// Its routes answer as API.md says whatever global filters and body parsers a host app has.
@SessionaryRoutes()
@Controller('users/me')
export class PasswordController {
  constructor(private readonly auth: AuthService) {}

  @Put('password')
  @HttpCode(HttpStatus.NO_CONTENT)
  @ApiOperation({ operationId: 'changePassword', summary: 'Change my password; every other session of mine ends (reason password_changed)' })
  @ApiNoContentResponse({ description: 'Changed; the current session stays' })
  @ApiBadRequestResponse({ type: ErrorResponseDto, description: 'The new password breaks the rules' })
  @ApiUnauthorizedResponse({
    type: ErrorResponseDto,
    description: 'Wrong current password, or no valid session',
    headers: { 'WWW-Authenticate': BEARER_CHALLENGE_HEADER },
  })
  @ApiTooManyRequestsResponse({ type: ErrorResponseDto, description: 'Too many wrong current passwords; see Retry-After' })
  changePassword(@CurrentAuth() auth: AuthContext, @Body() dto: ChangePasswordDto, @Client() client: ClientContext): Promise<void> {
    return this.auth.changePassword(auth, dto, client);
  }
}
