import { ExistingPasswordField } from '../../users/dto/user-fields';

/** POST /auth/reauthenticate: the current password, checked like a login's (any string up to the maximum). */
export class ReauthenticateDto {
  @ExistingPasswordField()
  password: string;
}
