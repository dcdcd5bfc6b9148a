import { ApiProperty, OmitType } from '@nestjs/swagger';
import type { UserEntity, UserRole } from '../user.entity';

export class UserResponseDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty({ example: 'ada_l' }) username: string;
  @ApiProperty({ example: 'ada@example.com' }) email: string;
  @ApiProperty({ enum: ['user', 'admin'] }) role: UserRole;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ format: 'date-time' }) updatedAt: string;

  static from(user: UserEntity): UserResponseDto {
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
  static fromUser(user: UserEntity): RegisteredUserResponseDto {
    const { updatedAt: _omitted, ...rest } = UserResponseDto.from(user);
    return Object.assign(new RegisteredUserResponseDto(), rest);
  }
}
