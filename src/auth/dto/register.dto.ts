import { EmailField, NewPasswordField, UsernameField } from '../../users/dto/user-fields';

export class RegisterDto {
  @UsernameField()
  username: string;

  @EmailField()
  email: string;

  @NewPasswordField()
  password: string;
}
