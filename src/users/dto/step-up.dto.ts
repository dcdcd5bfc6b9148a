import { IsAbsentOr } from '../../common/validation';
import { ExistingPasswordField } from './user-fields';

/**
 * The optional body of an action that needs a step-up (API.md): the current password in the
 * request, instead of an authentication younger than REAUTH_MAX_AGE. Checked whenever it is sent.
 */
export class StepUpDto {
  @IsAbsentOr()
  @ExistingPasswordField(false)
  currentPassword?: string;
}
