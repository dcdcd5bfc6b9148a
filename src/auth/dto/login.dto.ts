import { ValidateIf } from 'class-validator';
import { EmailField, ExistingPasswordField, UsernameField } from '../../users/dto/user-fields';

/** `{email, password}` or `{username, password}`; exactly one identifier. */
export class LoginDto {
  @ValidateIf((o: LoginDto) => o.username === undefined || o.email !== undefined)
  @EmailField(false, { rule: 'stored' })
  email?: string;

  @ValidateIf((o: LoginDto) => o.email === undefined || o.username !== undefined)
  @UsernameField(false)
  username?: string;

  @ExistingPasswordField()
  password: string;
}

/**
 * Login bodies for the OpenAPI document: the account of the register example, by either
 * identifier. Swagger UI's "Try it out" sends the first as it is, so it must succeed once the
 * register example has run (an e2e test executes both).
 */
export const LOGIN_EXAMPLES = {
  byEmail: { summary: 'By email', value: { email: 'ada@example.com', password: 'correct horse battery staple' } },
  byUsername: { summary: 'By username', value: { username: 'ada_l', password: 'correct horse battery staple' } },
};
