import { IsAbsentOr } from '../../common/validation';
import { ExistingPasswordField } from './user-fields';

/**
 * The optional body of an action that needs a step-up (API.md): the current password in the
 * request, instead of an authentication younger than REAUTH_MAX_AGE. Checked whenever the action
 * needs the step-up, even when the authentication is recent (ending one's own current session
 * is a logout, which needs none: there it is not read).
 */
export class StepUpDto {
  @IsAbsentOr()
  @ExistingPasswordField(false)
  currentPassword?: string;
}
