import { ExistingPasswordField, NewPasswordField } from '../../users/dto/user-fields';

export class ChangePasswordDto {
  @ExistingPasswordField()
  currentPassword: string;

  @NewPasswordField()
  newPassword: string;
}
