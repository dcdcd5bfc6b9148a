import { IsAbsentOr } from '../../common/validation';
import { EmailField, ExistingPasswordField, UsernameField } from './user-fields';

export class UpdateProfileDto {
  @IsAbsentOr()
  @UsernameField(false)
  username?: string;

  @IsAbsentOr()
  @EmailField(false, { rule: 'new if changed' })
  email?: string;

  /**
   * Needed to change the email unless the caller authenticated within REAUTH_MAX_AGE: whoever
   * holds a stolen token must not take over the account. Checked whenever it is sent.
   */
  @IsAbsentOr()
  @ExistingPasswordField(false)
  currentPassword?: string;
}
