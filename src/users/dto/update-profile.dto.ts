import { IsAbsentOr } from '../../common/validation';
import { EmailField, ExistingPasswordField, UsernameField } from './user-fields';

export class UpdateProfileDto {
  @IsAbsentOr()
  @UsernameField(false)
  username?: string;

  @IsAbsentOr()
  @EmailField(false)
  email?: string;

  /** Required when the email changes: whoever holds a stolen token must not take over the account. */
  @IsAbsentOr()
  @ExistingPasswordField(false)
  currentPassword?: string;
}
