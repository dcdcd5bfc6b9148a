import { ApiProperty, OmitType } from '@nestjs/swagger';
import { EMAIL_MAX_LENGTH, USERNAME_PATTERN } from './user-fields';
import type { UserProfile, UserRole } from '../user.entity';

export class UserResponseDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  // Every write goes through UsernameField and EmailField, and the columns hold 32 and 254.
  @ApiProperty({ example: 'ada_l', pattern: USERNAME_PATTERN.source, maxLength: 32 }) username: string;
  @ApiProperty({ example: 'ada@example.com', format: 'email', maxLength: EMAIL_MAX_LENGTH }) email: string;
  @ApiProperty({ enum: ['user', 'admin'] }) role: UserRole;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ format: 'date-time' }) updatedAt: string;

  static from(user: UserProfile): UserResponseDto {
    return Object.assign(new UserResponseDto(), {
      id: user.id,
      username: user.username,
      email: user.email,
      role: user.role,
      createdAt: user.createdAt.toISOString(),
      updatedAt: user.updatedAt.toISOString(),
    });
  }
}

export class RegisteredUserResponseDto extends OmitType(UserResponseDto, ['updatedAt'] as const) {
  static fromUser(user: UserProfile): RegisteredUserResponseDto {
    const { updatedAt: _omitted, ...rest } = UserResponseDto.from(user);
    return Object.assign(new RegisteredUserResponseDto(), rest);
  }
}
