import { IsOptional } from 'class-validator';
import { EmailField, ExistingPasswordField, UsernameField } from './user-fields';

export class UpdateProfileDto {
  @IsOptional()
  @UsernameField(false)
  username?: string;

  @IsOptional()
  @EmailField(false)
  email?: string;

  /** Required when the email changes: whoever holds a stolen token must not take over the account. */
  @IsOptional()
  @ExistingPasswordField(false)
  currentPassword?: string;
}
