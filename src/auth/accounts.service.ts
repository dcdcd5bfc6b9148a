import { BadRequestException, Injectable } from '@nestjs/common';
import { boundedClientContext, type ClientContext } from '../common/client-context';
import { inspectJson } from '../common/request-hygiene';
import { AppValidationPipe } from '../common/validation';
import type { UserProfile } from '../users/user.entity';
import { AuthService } from './auth.service';
import { LoginDto } from './dto/login.dto';
import { RegisterDto } from './dto/register.dto';
import type { TokenResponseDto } from './dto/token-response.dto';

/** The client as the routes record it: an address and a user agent cut to the columns' lengths, no control characters. */
const bounded = (client: ClientContext): ClientContext => boundedClientContext(client.ipAddress, client.userAgent);

/**
 * The request-hygiene check a body gets before any route sees it: a lone surrogate would
 * become U+FFFD on its way to bcrypt, so two different passwords would be one.
 */
function wellFormed<T>(input: T): T {
  if (!inspectJson(input).wellFormed) throw new BadRequestException(['strings must be well-formed Unicode']);
  return input;
}

/** A new account as `POST /auth/register` takes it. */
export interface NewAccount {
  username: string;
  email: string;
  password: string;
}

/** Credentials as `POST /auth/login` takes them: exactly one of `email` or `username`. */
export type LoginCredentials = { email: string; password: string } | { username: string; password: string };

/** What `POST /auth/login` answers: the token pair, its session and when that session ends at the latest. */
export type IssuedTokens = Pick<TokenResponseDto, 'accessToken' | 'refreshToken' | 'tokenType' | 'expiresIn' | 'sessionId' | 'sessionExpiresAt'>;

/**
 * Registration and login for a host application's own code (an invite or import flow, a
 * server-side login page), doing exactly what the routes do: the input checked by the same
 * rules (a BadRequestException naming the field, nothing written), the same limits for the
 * client's address, bcrypt, and the REGISTER / LOGIN / LOGIN_FAILED events with their domain
 * events, each in the transaction of its change. UsersService's writers write a row alone
 * (no event, no rule, no hashing); these are what a host calls instead.
 *
 * `client` is where the request came from (the `@Client()` of the host's route), or
 * `{ ipAddress: null, userAgent: null }` for work that no client asked for (an import): no
 * registration limit counts it then, neither the address's nor REGISTER_MAX_TOTAL, and no
 * address's failed-login counter (the identifier's still does).
 */
@Injectable()
export class AccountsService {
  private readonly validation = new AppValidationPipe();

  constructor(private readonly auth: AuthService) {}

  /** As `POST /auth/register`: the new user's profile; 409 (ConflictException) for a taken username or email, 429 past the registration limit. */
  async register(account: NewAccount, client: ClientContext): Promise<UserProfile> {
    const dto = (await this.validation.transform(wellFormed(account), { type: 'body', metatype: RegisterDto })) as RegisterDto;
    return (await this.auth.register(dto, bounded(client))).toJSON();
  }

  /** As `POST /auth/login`: a new session's tokens; 401 (UnauthorizedException) for wrong credentials, 429 in back-off. */
  async login(credentials: LoginCredentials, client: ClientContext): Promise<IssuedTokens> {
    const dto = (await this.validation.transform(wellFormed(credentials), { type: 'body', metatype: LoginDto })) as LoginDto;
    return this.auth.login(dto, bounded(client));
  }
}
