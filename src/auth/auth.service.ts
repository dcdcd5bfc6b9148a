import { BadRequestException, Injectable, UnauthorizedException } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource, EntityManager } from 'typeorm';
import type { AuditMetadata } from '../audit/audit-event.entity';
import { accountLockedEvents } from '../audit/account-locked-events';
import { AuditService } from '../audit/audit.service';
import type { ClientContext } from '../common/client-context';
import type { AuthContext } from '../common/current-auth.decorator';
import { SessionNotActiveException } from '../common/session-not-active.exception';
import { IssuedSession, SessionsService } from '../sessions/sessions.service';
import { assertPasswordFreeOfContext } from '../users/password-context';
import { PasswordHasher } from '../users/password-hasher';
import { UserEntity } from '../users/user.entity';
import { CURRENT_PASSWORD_REQUIRED, LockedPasswordAccount, UsersService } from '../users/users.service';
import { AccessTokenService } from './access-token.service';
import { LoginThrottleService } from '../login-throttle/login-throttle.service';
import { LoginDto } from './dto/login.dto';
import { RegisterDto } from './dto/register.dto';
import { RegistrationLimitService } from '../rate-limit/registration-limit.service';
import { ChangePasswordDto } from './dto/change-password.dto';
import { ReauthenticateDto } from './dto/reauthenticate.dto';
import { TokenResponseDto } from './dto/token-response.dto';

// Identical for an unknown account and a wrong password (ASVS 6.3.8).
export const INVALID_CREDENTIALS = 'Invalid credentials';

@Injectable()
export class AuthService {
  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly users: UsersService,
    private readonly sessions: SessionsService,
    private readonly audit: AuditService,
    private readonly passwords: PasswordHasher,
    private readonly accessTokens: AccessTokenService,
    private readonly throttle: LoginThrottleService,
    private readonly registrations: RegistrationLimitService,
  ) {}

  async register(dto: RegisterDto, client: ClientContext): Promise<UserEntity> {
    assertPasswordFreeOfContext(dto.password, dto);
    // After the input's checks (a 400 counts nothing), before the hash: a 429 costs no bcrypt.
    await this.registrations.count(client.ipAddress);
    const passwordHash = await this.passwords.hash(dto.password); // slow work before the transaction
    return this.dataSource.transaction(async (em) => {
      const user = await this.users.create(em, { username: dto.username, email: dto.email, passwordHash });
      await this.audit.record(em, { type: 'REGISTER', userId: user.id, client });
      return user;
    });
  }

  async login(dto: LoginDto, client: ClientContext): Promise<TokenResponseDto> {
    if (dto.email !== undefined && dto.username !== undefined) {
      throw new BadRequestException(['give either email or username, not both']);
    }
    const method = dto.email !== undefined ? 'email' : 'username';
    // Before any lookup or hashing, identical for existing and unknown accounts: 429 when in back-off.
    const attempt = await this.throttle.begin(
      `${method}:${dto.email ?? dto.username}`,
      client.ipAddress,
      async (em) => (await this.users.findByLogin(dto, em))?.id ?? null,
    );
    const user = await this.users.findByLogin(dto);
    // Same bcrypt work whether or not the account exists.
    const valid = user ? await this.passwords.verify(dto.password, user.passwordHash) : await this.passwords.verifyAgainstNobody(dto.password);
    const failed = async (reason: 'unknown_account' | 'wrong_password' | 'password_changed'): Promise<never> => {
      await this.dataSource.transaction((em) =>
        this.audit.record(
          em,
          { type: 'LOGIN_FAILED', userId: user?.id ?? null, client, metadata: { method, reason } },
          ...accountLockedEvents(attempt.locksSet, user?.id ?? null, client),
        ),
      );
      throw new UnauthorizedException(INVALID_CREDENTIALS);
    };
    if (!user) return failed('unknown_account');
    if (!valid) return failed('wrong_password');
    // A hash of another BCRYPT_COST is made again at this one (slow work, before the transaction).
    const staleCost = this.passwords.staleCostOf(user.passwordHash);
    const rehashed = staleCost === undefined ? undefined : await this.passwords.hash(dto.password);
    // The password was checked against the hash read before bcrypt: a change that committed
    // since (its other sessions ended) must not be outlived by a session opened with the old one.
    const issued = await this.whilePasswordHolds(user, dto.password, async (em, { rehashedByOther }) => {
      // Not when another login re-hashed it meanwhile (then the hash verified is not the one read).
      const rehash = rehashed !== undefined && !rehashedByOther;
      if (rehash) await this.users.storeRehashedPassword(em, user.id, rehashed);
      const metadata: AuditMetadata = rehash ? { method, bcryptCostFrom: staleCost!, bcryptCostTo: this.passwords.currentCost } : { method };
      const opened = await this.sessions.open(em, user.id, client, metadata);
      // Last, so the counters' rows (an IP's is shared by every login from behind one NAT)
      // stay locked for as short a time as possible; a login that fails to commit stays counted.
      await this.throttle.succeeded(attempt, em, user.id);
      return opened;
    });
    if (!issued) return failed('password_changed');
    // Once more after the commit, as endSessions() does after its own: a request of this
    // instance that read a session this login ended (session_limit) before the commit may have
    // cached it as active, and the NOTIFY comes back later (until 0.29.0 it was honoured meanwhile).
    this.sessions.forgetEnded(issued.result.endedSessionIds);
    return this.tokenResponse(issued.result);
  }

  async refresh(refreshToken: string, client: ClientContext): Promise<TokenResponseDto> {
    return this.tokenResponse(await this.sessions.refresh(refreshToken, client));
  }

  async logout(auth: AuthContext, client: ClientContext): Promise<void> {
    const ended = await this.sessions.end({ sessionId: auth.sessionId, ownerId: auth.userId }, { reason: 'logout', event: 'LOGOUT', client });
    // Lost a race with another end (revocation, expiry): the session is no longer valid.
    if (!ended) throw new SessionNotActiveException();
  }

  /**
   * Step-up (RFC 9470): the password again, under the login throttle and audited as
   * LOGIN_FAILED when wrong, exactly like a current password. The session goes on with a new
   * auth_time and a new token pair (the old refresh token becomes a rotated one).
   */
  async reauthenticate(auth: AuthContext, dto: ReauthenticateDto, client: ClientContext): Promise<TokenResponseDto> {
    const user = await this.users.getById(auth.userId);
    await this.users.verifyCurrentPassword(user, dto.password, auth.sessionId, client, 'reauthenticate');
    return this.tokenResponse(await this.sessions.reauthenticate(auth, client));
  }

  /**
   * The current password is required; the new one replaces it, every other session of the
   * user ends and every other place the account was logged into from loses its lockout
   * exemption, all in one transaction, so a thief holding another session is out at once and a
   * phisher's address guesses the new password no faster than any other.
   */
  async changePassword(auth: AuthContext, dto: ChangePasswordDto, client: ClientContext): Promise<void> {
    const user = await this.users.getById(auth.userId);
    // Before the current password's check, which settles the login throttle's counters and
    // known clients when it is right: a new password refused with 400 changed them until 0.28.0.
    // Checked again under the lock, against the names the account has then.
    assertPasswordFreeOfContext(dto.newPassword, user, 'newPassword');
    await this.users.verifyCurrentPassword(user, dto.currentPassword, auth.sessionId, client, 'password_change');
    const passwordHash = await this.passwords.hash(dto.newPassword);
    // Of two concurrent changes, one wins: the other's current password no longer matches.
    let ended: string[] = [];
    const changed = await this.whilePasswordHolds(user, dto.currentPassword, async (em, { stored, account }) => {
      // The names as the locked row has them: a username or email change that committed since
      // they were read (until 0.29.0 they were used as read) is what the new password must not
      // contain, and what this place is known under from now on.
      const current = { id: user.id, email: account.email, username: account.username };
      assertPasswordFreeOfContext(dto.newPassword, current, 'newPassword');
      await this.users.replacePasswordHash(em, { id: user.id, passwordHash: stored }, passwordHash);
      // The places the old password was used from are no longer known (an attacker's too), but this one.
      await this.throttle.forgetOtherClients(em, current, client.ipAddress);
      ended = await this.sessions.endSessions(
        { userId: user.id, exceptSessionId: auth.sessionId },
        { reason: 'password_changed', event: 'SESSION_REVOKED', client, actorSessionId: auth.sessionId },
        em,
      );
      await this.audit.record(em, {
        type: 'PASSWORD_CHANGED',
        userId: user.id,
        sessionId: auth.sessionId,
        client,
        metadata: { endedSessions: ended.length },
      });
    });
    if (!changed) {
      // Right when checked, and changed by another request before this one's transaction (a
      // double submit, or someone else who knows it racing the owner): a failed change like any
      // other, audited and answered alike (until 0.24.2 neither: no event, another message).
      // Not counted by the throttle: the password was no guess.
      await this.dataSource.transaction((em) =>
        this.audit.record(em, {
          type: 'LOGIN_FAILED',
          userId: user.id,
          sessionId: auth.sessionId,
          client,
          metadata: { method: 'current_password', action: 'password_change', reason: 'password_changed' },
        }),
      );
      throw new UnauthorizedException(CURRENT_PASSWORD_REQUIRED);
    }
    // Once more after the commit, as endSessions() does after its own (see there).
    this.sessions.forgetEnded(ended);
  }

  /**
   * Runs `work` in a transaction that holds the user's row locked, once its stored hash is one
   * `password` matches (`password` was verified against `user.passwordHash`, read before the
   * transaction, since bcrypt is too slow to run under the lock). A hash changed meanwhile is
   * checked again with bcrypt outside the lock, and the transaction tried again (at most three
   * times): another login's re-hash at a new BCRYPT_COST (the same password, another hash)
   * passes, a changed password does not. Undefined when the password is no longer the user's,
   * or the user is gone.
   */
  private async whilePasswordHolds<T>(
    user: Pick<UserEntity, 'id' | 'passwordHash'>,
    password: string,
    work: (em: EntityManager, locked: { stored: string; rehashedByOther: boolean; account: LockedPasswordAccount }) => Promise<T>,
  ): Promise<{ result: T } | undefined> {
    let verified = user.passwordHash;
    for (let tries = 1; ; tries++) {
      const outcome = await this.dataSource.transaction(async (em): Promise<{ result: T } | { storedNow: string | undefined }> => {
        const account = await this.users.lockPasswordAccount(em, user.id);
        const stored = account?.passwordHash;
        if (!account || stored !== verified) return { storedNow: stored };
        return { result: await work(em, { stored: account.passwordHash, rehashedByOther: verified !== user.passwordHash, account }) };
      });
      if ('result' in outcome) return outcome;
      if (outcome.storedNow === undefined || tries === 3 || !(await this.passwords.verify(password, outcome.storedNow))) return undefined;
      verified = outcome.storedNow;
    }
  }

  private async tokenResponse({ session, refreshToken }: IssuedSession): Promise<TokenResponseDto> {
    const access = await this.accessTokens.issue(session);
    return {
      accessToken: access.token,
      refreshToken,
      tokenType: 'Bearer',
      expiresIn: access.expiresIn,
      sessionId: session.id,
      sessionExpiresAt: session.absoluteExpiresAt.toISOString(),
    };
  }
}
