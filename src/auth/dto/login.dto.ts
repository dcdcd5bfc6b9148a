import { ValidateIf } from 'class-validator';
import { EmailField, ExistingPasswordField, UsernameField } from '../../users/dto/user-fields';

/** `{email, password}` or `{username, password}`; exactly one identifier. */
export class LoginDto {
  @ValidateIf((o: LoginDto) => o.username === undefined || o.email !== undefined)
  @EmailField(false)
  email?: string;

  @ValidateIf((o: LoginDto) => o.email === undefined || o.username !== undefined)
  @UsernameField(false)
  username?: string;

  @ExistingPasswordField()
  password: string;
}
