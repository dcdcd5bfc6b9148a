import { ApiProperty } from '@nestjs/swagger';
import { IsString, MaxLength } from 'class-validator';

export class RefreshDto {
  @ApiProperty({ description: 'The refresh token from the last login or refresh', maxLength: 2048 })
  @IsString()
  // Generous on purpose: a wrong token (an access token, say) is a 401, not a 400.
  @MaxLength(2048)
  refreshToken: string;
}
