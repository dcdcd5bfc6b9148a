import { BadRequestException, ConflictException, Injectable, NotFoundException, UnauthorizedException } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource, EntityManager } from 'typeorm';
import { accountLockedEvents } from '../audit/account-locked-events';
import { AuditService } from '../audit/audit.service';
import type { ClientContext } from '../common/client-context';
import type { AuthContext } from '../common/current-auth.decorator';
import { RecentAuthPolicy } from '../common/recent-auth';
import { PG_UNIQUE_VIOLATION, pgErrorCode } from '../database/pg-errors';
import { sql } from '../database/sql';
import { LoginThrottleService } from '../login-throttle/login-throttle.service';
import { UpdateProfileDto } from './dto/update-profile.dto';
import { USERNAME_MESSAGE, USERNAME_PATTERN } from './dto/user-fields';
import { PasswordHasher } from './password-hasher';
import { UserEntity, UserProfile, UserRole } from './user.entity';
import { RegistrationLimitService } from '../rate-limit/registration-limit.service';
import { requireActingSession } from '../sessions/acting-session';
import { isNewEmailAddress, newEmailAddressMessage } from '../common/validation';

export interface NewUser {
  username: string;
  email: string;
  passwordHash: string;
}

export interface LoginIdentifier {
  email?: string;
  username?: string;
}

// One message for both, so registration does not say which of the two is taken.
const TAKEN_MESSAGE = 'Username or email is already taken';

/** What lockPasswordAccount answers: the locked row's password hash and names. */
export interface LockedPasswordAccount {
  passwordHash: string;
  email: string;
  username: string;
}

/** A row of `users` as PostgreSQL answers it. */
interface UserRow {
  id: string;
  username: string;
  email: string;
  password_hash: string;
  role: UserRole;
  created_at: Date;
  updated_at: Date;
}
const EMAIL_STEP_UP_MESSAGE = 'Changing the email needs a recent authentication or currentPassword';
/** A profile change that found the profile changed by another request since it read it. */
const PROFILE_CHANGED_MESSAGE = 'The profile was changed by another request meanwhile; read it again and retry';
/** Lower case of ASCII letters only: what makes two spellings of one address without a doubt. */
const asciiLowerCase = (text: string) => text.replace(/[A-Z]/g, (c) => c.toLowerCase());
/** The 401's message whenever a current password is missing or not the user's. */
export const CURRENT_PASSWORD_REQUIRED = 'Current password is required and must be correct';

/**
 * Users: reads for anyone (a host's `getById`, `getProfile`), and the writes Sessionary's own
 * services make inside their transactions, each beside the audit event its caller records
 * (`create`, `replacePasswordHash`, `storeRehashedPassword`). A host that registers or logs
 * users in calls AccountsService instead, which keeps the routes' rules and events.
 */
@Injectable()
export class UsersService {
  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly audit: AuditService,
    private readonly passwords: PasswordHasher,
    private readonly throttle: LoginThrottleService,
    private readonly recentAuth: RecentAuthPolicy,
    private readonly registrations: RegistrationLimitService,
  ) {}

  /**
   * Re-authentication before a sensitive change (ASVS 7.5.1): the current password, checked
   * under the same throttle as logins (keyed by the account, so a stolen access token cannot
   * guess faster than a login could), a failure audited as LOGIN_FAILED. 401 when wrong.
   */
  async verifyCurrentPassword(
    user: UserEntity,
    password: string | undefined,
    sessionId: string,
    client: ClientContext,
    action: 'password_change' | 'email_change' | 'profile_update' | 'reauthenticate' | 'end_session' | 'end_other_sessions' | 'admin_revocation',
  ): Promise<void> {
    if (password === undefined) throw new UnauthorizedException(CURRENT_PASSWORD_REQUIRED);
    const attempt = await this.throttle.begin(`account:${user.id}`, client.ipAddress, () => Promise.resolve(user.id));
    if (await this.passwords.verify(password, user.passwordHash)) {
      await this.throttle.succeeded(attempt, undefined, user.id);
      return;
    }
    await this.dataSource.transaction((em) =>
      this.audit.record(
        em,
        { type: 'LOGIN_FAILED', userId: user.id, sessionId, client, metadata: { method: 'current_password', action } },
        ...accountLockedEvents(attempt.locksSet, user.id, client, sessionId),
      ),
    );
    throw new UnauthorizedException(CURRENT_PASSWORD_REQUIRED);
  }

  /**
   * Step-up for a sensitive action (API.md, RFC 9470): an authentication younger than
   * REAUTH_MAX_AGE, or the current password in the request. A password that is sent is checked
   * (under the throttle, a wrong one audited as LOGIN_FAILED) even when the authentication is recent.
   */
  async requireStepUp(
    auth: Pick<AuthContext, 'userId' | 'sessionId' | 'authTime'>,
    currentPassword: string | undefined,
    client: ClientContext,
    action: 'end_session' | 'end_other_sessions' | 'admin_revocation',
  ): Promise<void> {
    if (currentPassword === undefined) return this.recentAuth.requireRecent(auth);
    await this.verifyCurrentPassword(await this.getById(auth.userId), currentPassword, auth.sessionId, client, action);
  }

  /**
   * Stores a new password hash in the caller's transaction, if the stored one is still the
   * one the caller verified (of two concurrent changes, one wins). False when it is not.
   */
  async replacePasswordHash(em: EntityManager, user: Pick<UserEntity, 'id' | 'passwordHash'>, passwordHash: string): Promise<boolean> {
    const result = await em.update(UserEntity, { id: user.id, passwordHash: user.passwordHash }, { passwordHash });
    return Boolean(result.affected);
  }

  /**
   * The same password's hash made at the current BCRYPT_COST (a login's, on the row it locked):
   * the profile's updated_at stays, since nothing the user sees changed.
   */
  async storeRehashedPassword(em: EntityManager, id: string, passwordHash: string): Promise<void> {
    await sql(em, `UPDATE users SET password_hash = $2 WHERE id = $1`, [id, passwordHash]);
  }

  /** The user's role, or undefined when there is no such user (the session check's cache fill). */
  async roleOf(id: string): Promise<UserRole | undefined> {
    const user = await this.dataSource.getRepository(UserEntity).findOne({ select: { id: true, role: true }, where: { id } });
    return user?.role;
  }

  /**
   * Locks the user's row in the caller's transaction, so that changes which must see one
   * consistent set of the user's sessions (a login counting its free places) run one at a
   * time. FOR NO KEY UPDATE, not FOR UPDATE: it must not block the foreign-key checks (KEY
   * SHARE) of concurrent inserts that reference the user, such as a refresh's audit event.
   */
  async lockForSessionChange(em: EntityManager, id: string): Promise<void> {
    await em.getRepository(UserEntity).createQueryBuilder('u').select('u.id').where('u.id = :id', { id }).setLock('for_no_key_update').getRawOne();
  }

  /**
   * Locks the user's row as lockForSessionChange does and answers its password hash and names
   * as they are now (a lock that waited for a change reads the row that change left), or
   * undefined when the user is gone: what a login or a password change verified the password
   * against must still be the stored hash, or another one the same password matches, and what
   * a password change forgets and checks the new password against are the names the account
   * has when it commits (see AuthService).
   */
  async lockPasswordAccount(em: EntityManager, id: string): Promise<LockedPasswordAccount | undefined> {
    const { rows } = await sql<{ password_hash: string; email: string; username: string }>(
      em,
      `SELECT password_hash, email, username FROM users WHERE id = $1 FOR NO KEY UPDATE`,
      [id],
    );
    const row = rows[0];
    return row && { passwordHash: row.password_hash, email: row.email, username: row.username };
  }

  /** @deprecated since 0.29.0: lockPasswordAccount, which answers the names as well. */
  async lockPasswordHash(em: EntityManager, id: string): Promise<string | undefined> {
    return (await this.lockPasswordAccount(em, id))?.passwordHash;
  }

  findById(id: string): Promise<UserEntity | null> {
    return this.dataSource.getRepository(UserEntity).findOneBy({ id });
  }

  async getById(id: string): Promise<UserEntity> {
    const user = await this.findById(id);
    if (!user) throw new NotFoundException('User not found');
    return user;
  }

  /**
   * A user's profile (GET /users/me), in one prepared statement without the password hash:
   * TypeORM's findOneBy spent about twice the Node CPU (139–227 µs a call against 61–103,
   * measured on one connection) and PostgreSQL planned it at every call.
   */
  async getProfile(id: string): Promise<UserProfile> {
    const {
      rows: [row],
    } = await sql<{ id: string; username: string; email: string; role: UserRole; created_at: Date; updated_at: Date }>(
      this.dataSource.manager,
      `SELECT id, username, email, role, created_at, updated_at FROM users WHERE id = $1`,
      [id],
      { prepareAs: 'sessionary_user_profile' },
    );
    if (!row) throw new NotFoundException('User not found');
    return { id: row.id, username: row.username, email: row.email, role: row.role, createdAt: row.created_at, updatedAt: row.updated_at };
  }

  /** Case-insensitive, served by the lower() unique indexes. */
  findByLogin(identifier: LoginIdentifier, em: EntityManager = this.dataSource.manager): Promise<UserEntity | null> {
    const qb = em.getRepository(UserEntity).createQueryBuilder('u');
    if (identifier.email !== undefined) qb.where('lower(u.email) = lower(:email)', { email: identifier.email });
    else if (identifier.username !== undefined) qb.where('lower(u.username) = lower(:username)', { username: identifier.username });
    else return Promise.resolve(null);
    return qb.getOne();
  }

  /**
   * Inserts inside the caller's transaction; the unique indexes settle races (409). The row
   * alone: no rule is checked, the hash is the caller's, no REGISTER event is written. A host
   * registers users with AccountsService.register(), which does all of that.
   */
  async create(em: EntityManager, input: NewUser): Promise<UserEntity> {
    // ON CONFLICT DO NOTHING rather than catching the unique violation: PostgreSQL logs each
    // violation with its key ("Key (lower(email))=(…) already exists"), so every probe of a
    // taken name or address would leave that name or address in the server's log.
    const {
      rows: [row],
    } = await sql<UserRow>(
      em,
      `INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3)
       ON CONFLICT DO NOTHING
       RETURNING id, username, email, password_hash, role, created_at, updated_at`,
      [input.username, input.email, input.passwordHash],
    );
    if (!row) throw new ConflictException(TAKEN_MESSAGE);
    return em.create(UserEntity, {
      id: row.id,
      username: row.username,
      email: row.email,
      passwordHash: row.password_hash,
      role: row.role,
      createdAt: row.created_at,
      updatedAt: row.updated_at,
    });
  }

  /**
   * Sets a user's role (the admin CLI). Takes effect on the user's next request on every
   * instance: the users trigger's NOTIFY updates each instance's session cache (or, without its
   * LISTEN connection, the session check reads the database). Answers the previous role.
   */
  async setRole(email: string, role: UserRole, actor: string): Promise<{ user: UserEntity; previous: UserRole }> {
    return this.dataSource.transaction(async (em) => {
      const user = await em
        .getRepository(UserEntity)
        .createQueryBuilder('u')
        .setLock('pessimistic_write')
        .where('lower(u.email) = lower(:email)', { email })
        .getOne();
      if (!user) throw new NotFoundException('User not found');
      const previous = user.role;
      if (previous !== role) {
        await em.update(UserEntity, { id: user.id }, { role });
        await this.audit.record(em, { type: 'ROLE_CHANGED', userId: user.id, metadata: { from: previous, to: role, by: actor } });
      }
      return { user: Object.assign(user, { role }), previous };
    });
  }

  /**
   * Changing the email needs a recent authentication (REAUTH_MAX_AGE) or the current password in
   * the request. A currentPassword that is sent is checked whatever the request changes, even
   * when the authentication is recent: a wrong one is never ignored (until 0.20.2 it was with a
   * username change alone, against SECURITY.md 7.5.1 and the DTO).
   */
  async updateProfile(
    auth: Pick<AuthContext, 'userId' | 'sessionId' | 'authTime'>,
    dto: UpdateProfileDto,
    client: ClientContext,
  ): Promise<UserEntity> {
    const { userId, sessionId } = auth;
    // The route's DTO checked it; a host calling this service directly (src/index.ts exports it)
    // is held to the same rule, which until 0.24.2 it was not: a name too long or null was a
    // database error (a 500), one with a space was stored and could never log in.
    if (dto.username !== undefined && (typeof dto.username !== 'string' || !USERNAME_PATTERN.test(dto.username))) {
      throw new BadRequestException([USERNAME_MESSAGE]);
    }
    const user = await this.getById(userId);
    const changes: Partial<Pick<UserEntity, 'username' | 'email'>> = {};
    if (dto.username !== undefined && dto.username !== user.username) changes.username = dto.username;
    if (dto.email !== undefined && dto.email !== user.email) changes.email = dto.email;
    // A new address is held to the stricter rules (the DTO lets the stored one through unchanged).
    if (changes.email !== undefined && !isNewEmailAddress(changes.email)) throw new BadRequestException([newEmailAddressMessage('email')]);
    // Only a change of ASCII letters' case alone (Ada@ to ada@) is the same address, needing no
    // step-up. PostgreSQL's lower() takes more for one: 'İ' to 'i', so 'alice@gmaİl.com' was
    // the same as 'alice@gmail.com' to it, and a stolen token changed the address to another
    // domain without the password (until 0.24.2; before 0.20.2, JavaScript's lowering, with final
    // sigma's difference, let a case change skip it the other way).
    const emailChanges = changes.email !== undefined && asciiLowerCase(changes.email) !== asciiLowerCase(user.email);
    if (dto.currentPassword !== undefined) {
      await this.verifyCurrentPassword(user, dto.currentPassword, sessionId, client, emailChanges ? 'email_change' : 'profile_update');
    } else if (emailChanges) {
      // A stolen access token alone must not be enough to take the account over.
      this.recentAuth.requireRecent(auth, EMAIL_STEP_UP_MESSAGE);
    }
    const fields = Object.keys(changes);
    if (!fields.length) return user;
    // Before the write whose 409 says a name or an email is taken (RegistrationLimitService).
    await this.registrations.countIdentifierChange(client.ipAddress);

    try {
      return await this.dataSource.transaction(async (em) => {
        // The session that asked is still active (a password change may have ended it during
        // the password check above): see requireActingSession.
        await this.lockForSessionChange(em, userId);
        await requireActingSession(em, sessionId);
        // What the step-up was decided on must still be the profile: a change that committed
        // since (the owner's new address) could otherwise be undone by a request that needed no
        // step-up against the old one (until 0.24.2). Decided again by the client's retry.
        const now = await em.findOneByOrFail(UserEntity, { id: userId });
        if (now.username !== user.username || now.email !== user.email) throw new ConflictException(PROFILE_CHANGED_MESSAGE);
        // Asked first, as create()'s ON CONFLICT does: a unique violation is logged by PostgreSQL
        // with the taken value. Two changes racing to one name still meet the index (caught below).
        const taken = await sql(em, `SELECT 1 FROM users WHERE id <> $1 AND (lower(username) = lower($2) OR lower(email) = lower($3)) LIMIT 1`, [
          userId,
          changes.username ?? null,
          changes.email ?? null,
        ]);
        if (taken.rows.length) throw new ConflictException(TAKEN_MESSAGE);
        await em.update(UserEntity, { id: userId }, changes);
        const updated = await em.findOneByOrFail(UserEntity, { id: userId });
        await this.throttle.carryKnownClientToNames(em, updated, client.ipAddress);
        await this.audit.record(em, {
          type: 'PROFILE_UPDATED',
          userId,
          sessionId,
          client,
          metadata: { fields: fields.sort().join(',') },
        });
        return updated;
      });
    } catch (error) {
      if (pgErrorCode(error) === PG_UNIQUE_VIOLATION) throw new ConflictException(TAKEN_MESSAGE);
      throw error;
    }
  }
}
