import { Body, Controller, Get, Patch } from '@nestjs/common';
import { SessionaryRoutes } from '../common/sessionary-routes.decorator';
import { ApiBadRequestResponse, ApiConflictResponse, ApiOkResponse, ApiOperation, ApiTags, ApiTooManyRequestsResponse } from '@nestjs/swagger';
import { Client, ClientContext } from '../common/client-context';
import { AuthContext, CurrentAuth } from '../common/current-auth.decorator';
import { AuthenticatedApi } from '../common/authenticated-api.decorator';
import { ErrorResponseDto } from '../common/error-response.dto';
import { ApiStepUpUnauthorizedResponse } from '../common/recent-auth';
import { UpdateProfileDto } from './dto/update-profile.dto';
import { UserResponseDto } from './dto/user-response.dto';
import { UsersService } from './users.service';

@ApiTags('users')
@AuthenticatedApi()
// Its routes answer as API.md says whatever global filters and body parsers a host app has.
@SessionaryRoutes()
@Controller('users')
export class UsersController {
  constructor(private readonly users: UsersService) {}

  @Get('me')
  @ApiOperation({ operationId: 'getMe', summary: "The caller's profile" })
  @ApiOkResponse({ type: UserResponseDto })
  async me(@CurrentAuth() auth: AuthContext): Promise<UserResponseDto> {
    return UserResponseDto.from(await this.users.getProfile(auth.userId));
  }

  @Patch('me')
  @ApiOperation({
    operationId: 'updateMe',
    summary: 'Change username and/or email; an email change needs a recent authentication or currentPassword',
  })
  @ApiOkResponse({ type: UserResponseDto })
  @ApiBadRequestResponse({ type: ErrorResponseDto })
  @ApiStepUpUnauthorizedResponse(' for an email change without currentPassword; or a wrong currentPassword')
  @ApiConflictResponse({
    type: ErrorResponseDto,
    description: 'Username or email is already taken, or the profile was changed by another request while this one waited (read it again and retry)',
  })
  @ApiTooManyRequestsResponse({
    type: ErrorResponseDto,
    description: 'Too many wrong current passwords, or username or email changes and registrations from this address; see Retry-After',
  })
  async update(@CurrentAuth() auth: AuthContext, @Body() dto: UpdateProfileDto, @Client() client: ClientContext): Promise<UserResponseDto> {
    return UserResponseDto.from(await this.users.updateProfile(auth, dto, client));
  }
}
