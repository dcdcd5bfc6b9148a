import { SessionNotActiveException } from '../common/session-not-active.exception';
import { ForbiddenException, Injectable, Logger, OnApplicationBootstrap, OnModuleDestroy, Optional, UnauthorizedException } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource, EntityManager } from 'typeorm';
import { AuditEventType, AuditMetadata } from '../audit/audit-event.entity';
import { AuditEventInput, AuditService } from '../audit/audit.service';
import { BoundedAuditService } from '../audit/bounded-audit.service';
import { RefusedRequestsTally } from '../audit/refused-requests-tally';
import type { ClientContext } from '../common/client-context';
import type { ActiveSession } from '../common/current-auth.decorator';
import type { AppConfig } from '../config/config';
import { sql } from '../database/sql';
import type { UserRole } from '../users/user.entity';
import { UsersService } from '../users/users.service';
import { generateRefreshToken, hashRefreshToken, looksLikeRefreshToken } from './refresh-token';
import { ActivityWriteOutcome, SessionActivityBuffer } from './session-activity';
import { CachedSession, SessionCache } from './session-cache';
import { SessionChangeListener } from './session-change-listener';
import { requireActingSession, userOfSession } from './acting-session';
import { activityDue, judgeCachedSession, judgeSession, touchIntervalMs } from './session-rules';
import { SessionEndReason, SessionEntity } from './session.entity';
import { SESSION_COLUMNS, type SessionRow, toEntity } from './session-row';
import { notifyFromNewConnection, notifyThrough } from '../database/pg-channel-listener';

/** A session with the refresh token that was just issued for it (shown to the client once). */
export interface IssuedSession {
  session: SessionEntity;
  refreshToken: string;
}

/** What open() answers: the new session, and those it ended to make room for it. */
export interface OpenedSession extends IssuedSession {
  /**
   * Sessions ended (reason session_limit) in the caller's transaction: pass them to
   * forgetEnded() once it commits, as endSessions() does after its own commit.
   */
  endedSessionIds: string[];
}

export interface EndSessionOptions {
  reason: SessionEndReason;
  event: AuditEventType;
  client?: ClientContext | null;
  /** The session of whoever asked for the end (recorded on each event when not the ended one). */
  actorSessionId?: string;
  /**
   * The role the acting session's user must still hold when the sessions end (read under that
   * user's row lock): a role checked only as the request began (RolesGuard) let an admin demoted
   * during the request's step-up, a bcrypt check of a fraction of a second, still end a user's
   * sessions (until 0.24.2). Refused: ActorRoleChangedException (403), nothing ended.
   */
  actorRole?: UserRole;
  metadata?: AuditMetadata;
}

/** The acting user no longer holds the role the request was let in with (see EndSessionOptions.actorRole). */
export class ActorRoleChangedException extends ForbiddenException {
  constructor(readonly role: string) {
    super('Insufficient role');
  }
}

/** Which active sessions to end: one (optionally only if it is this user's), or all of a user's but one. */
export type SessionTarget = { sessionId: string; ownerId?: string } | { userId: string; exceptSessionId?: string };

export { UNAUTHORIZED_SESSION } from '../common/session-not-active.exception';
const INVALID_REFRESH = 'Invalid refresh token';

/** Why a refresh was refused (the label of sessionary_refresh_failures_total). */
export const REFRESH_FAILURE_REASONS = [
  'malformed',
  'unknown',
  'reused',
  'ended',
  'idle_timeout',
  'absolute_timeout',
  'refresh_expired',
  'other',
] as const;
export type RefreshFailureReason = (typeof REFRESH_FAILURE_REASONS)[number];

/** Deadlines closer than this (plus the clock offset's uncertainty) are checked in the database. */
const DEADLINE_MARGIN_MS = 1000;

/**
 * Owns the session lifecycle: opening a session, the check of every request, refresh rotation
 * and ending sessions with their audit events (UserSessionsService and
 * SessionMaintenanceService end sessions through it). Deadlines are computed and compared
 * with the database's clock (now()), so instances with skewed clocks still agree on when a
 * session ends.
 */
@Injectable()
export class SessionsService implements OnApplicationBootstrap, OnModuleDestroy {
  private readonly logger = new Logger(SessionsService.name);
  private readonly idleTtl: number;
  private readonly absoluteTtl: number;
  private readonly refreshTtl: number;
  private readonly touchIntervalMs: number;
  private readonly maxPerUser: number;
  private readonly cache: SessionCache;
  private readonly listener: SessionChangeListener | undefined;
  private readonly activity: SessionActivityBuffer;
  private readonly checks = { cache: 0, database: 0 };
  private readonly refreshFailures = Object.fromEntries(REFRESH_FAILURE_REASONS.map((r) => [r, 0])) as Record<RefreshFailureReason, number>;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly audit: AuditService,
    private readonly boundedAudit: BoundedAuditService,
    private readonly users: UsersService,
    config: ConfigService<AppConfig, true>,
    /** Sums refresh tokens that match no session per client address into the audit log (ASVS 16.3.1). */
    @Optional() private readonly refusals?: RefusedRequestsTally,
  ) {
    this.idleTtl = config.get('SESSION_IDLE_TTL', { infer: true });
    this.absoluteTtl = config.get('SESSION_ABSOLUTE_TTL', { infer: true });
    this.refreshTtl = config.get('REFRESH_TOKEN_TTL', { infer: true });
    this.touchIntervalMs = touchIntervalMs(this.idleTtl, config.get('SESSION_TOUCH_INTERVAL', { infer: true }));
    this.maxPerUser = config.get('SESSION_MAX_PER_USER', { infer: true });
    this.cache = new SessionCache({
      max: config.get('SESSION_CACHE_MAX', { infer: true }),
      ttlMs: config.get('SESSION_CACHE_TTL', { infer: true }) * 1000,
    });
    const poolUrl = config.get('DATABASE_URL', { infer: true });
    const listenUrl = config.get('DATABASE_LISTEN_URL', { infer: true }) ?? poolUrl;
    this.listener =
      this.cache.enabled && listenUrl && poolUrl
        ? new SessionChangeListener(this.cache, {
            url: listenUrl,
            notifyThroughPool: (channel) => notifyThrough(dataSource, channel),
            notifyFromNewConnection: (channel, payload) => notifyFromNewConnection(poolUrl, 'sessionary-listener', channel, payload),
          })
        : undefined;
    this.activity = new SessionActivityBuffer(dataSource, {
      idleTtlSeconds: this.idleTtl,
      intervalMs: this.touchIntervalMs,
      maxPending: Math.max(1000, config.get('SESSION_CACHE_MAX', { infer: true })),
      onWrite: (sessionIds) => this.followActivityWrite(sessionIds),
    });
  }

  async onApplicationBootstrap(): Promise<void> {
    this.activity.start();
    await this.listener?.start();
  }

  /** Before the pool closes (TypeORM closes it on application shutdown): the last activity is written. */
  async onModuleDestroy(): Promise<void> {
    await this.listener?.stop();
    await this.activity.stop();
  }

  /** For /metrics: refused refreshes by reason since this instance started. */
  refreshFailureCounts(): Record<RefreshFailureReason, number> {
    return { ...this.refreshFailures };
  }

  /** For /metrics and the multi-instance tests: is the cache in use, and how full is it. */
  cacheState(): {
    enabled: boolean;
    listening: boolean;
    size: number;
    pendingActivity: number;
    listenerPid: number | undefined;
    checks: { cache: number; database: number };
  } {
    return {
      checks: { ...this.checks },
      enabled: this.cache.enabled,
      listening: this.listener?.listening ?? false,
      size: this.cache.size,
      pendingActivity: this.activity.pendingCount,
      listenerPid: this.listener?.backendPid,
    };
  }

  /**
   * Opens a session inside the caller's transaction, with its LOGIN event. Beyond
   * SESSION_MAX_PER_USER, the least recently used sessions end (reason session_limit); their
   * events and the LOGIN event are appended to the chain in one step (one head lock, one
   * insert: the login path's round trips cost CPU that bcrypt would otherwise have).
   */
  async open(em: EntityManager, userId: string, client: ClientContext, loginMetadata: AuditMetadata): Promise<OpenedSession> {
    const madeRoom = this.maxPerUser > 0 ? await this.makeRoomForOneMore(em, userId, client) : { ids: [], events: [] };
    const refreshToken = generateRefreshToken();
    // auth_time is now(), the transaction's start like created_at's default: the login is the authentication.
    const { rows } = await sql<SessionRow>(
      em,
      `INSERT INTO sessions (user_id, auth_time, idle_expires_at, absolute_expires_at, refresh_token_hash, refresh_expires_at, ip_address, user_agent)
       VALUES ($1, now(), now() + make_interval(secs => $2), now() + make_interval(secs => $3), $4,
               now() + make_interval(secs => LEAST($5, $3)), $6, $7)
       RETURNING ${SESSION_COLUMNS}`,
      [userId, this.idleTtl, this.absoluteTtl, hashRefreshToken(refreshToken), this.refreshTtl, client.ipAddress, client.userAgent],
    );
    const session = toEntity(rows[0]);
    await this.audit.record(em, ...madeRoom.events, { type: 'LOGIN', userId, sessionId: session.id, client, metadata: loginMetadata });
    return { session, refreshToken, endedSessionIds: madeRoom.ids };
  }

  /**
   * THE session check: every authenticated request goes through here and nowhere else.
   * Answers who is calling when the session is active; otherwise 401 (and an expired
   * session is ended with its reason and one audit event).
   *
   * In steady state it answers from the per-instance cache without a query: the cache holds
   * only what a LISTEN/NOTIFY connection keeps exact. Without that connection, for a session
   * not cached, and for one whose deadline is near, the database decides.
   */
  async validateSession(sessionId: string, userId: string): Promise<ActiveSession> {
    const cached = this.cache.get(sessionId);
    if (cached && this.listener) {
      const now = this.listener.databaseNow();
      const verdict = judgeCachedSession(cached, userId, now, DEADLINE_MARGIN_MS + this.listener.clockUncertaintyMs);
      if (verdict !== 'recheck') this.checks.cache++;
      if (verdict === 'refused') throw new SessionNotActiveException();
      if (verdict === 'active') {
        this.noteActivity(sessionId, cached, now);
        return activeSession(sessionId, cached);
      }
    }
    return this.validateFromDatabase(sessionId, userId);
  }

  private async validateFromDatabase(sessionId: string, userId: string): Promise<ActiveSession> {
    this.checks.database++;
    const ticket = this.cache.enabled ? this.cache.beginFill(sessionId) : undefined;
    let row: (SessionRow & { now: Date }) | undefined;
    let role: UserRole | undefined;
    try {
      // The role is the users module's; both reads run at once on two connections, so a
      // cache miss still costs one round trip. The token's user is asked for: a session of
      // another user is refused below, and its entry never cached.
      [
        {
          rows: [row],
        },
        role,
      ] = await Promise.all([
        sql<SessionRow & { now: Date }>(
          this.dataSource.manager,
          `SELECT user_id, ended_at, idle_expires_at, absolute_expires_at, last_seen_at, now() AS now FROM sessions WHERE id = $1`,
          [sessionId],
        ),
        this.users.roleOf(userId),
      ]);
    } finally {
      if (ticket && (!row || !role || row.user_id !== userId)) this.cache.completeFill(ticket, undefined);
    }
    if (!row || !role || row.user_id !== userId) throw new SessionNotActiveException();
    const entry: CachedSession = {
      userId: row.user_id,
      role,
      ended: row.ended_at !== null,
      idleExpiresAt: row.idle_expires_at.getTime(),
      absoluteExpiresAt: row.absolute_expires_at.getTime(),
      lastSeenAt: row.last_seen_at.getTime(),
    };
    const verdict = judgeSession(
      {
        endedAt: row.ended_at,
        idleExpiresAt: row.idle_expires_at,
        absoluteExpiresAt: row.absolute_expires_at,
        lastSeenAt: row.last_seen_at,
        now: row.now,
      },
      this.touchIntervalMs,
    );
    // An ended session is cached too (it cannot come back), so replayed tokens cost no query.
    if (ticket) this.cache.completeFill(ticket, verdict.status === 'expired' ? undefined : entry);
    if (verdict.status === 'expired') {
      await this.endIfExpired(sessionId);
      throw new SessionNotActiveException();
    }
    if (verdict.status === 'ended') throw new SessionNotActiveException();
    this.noteActivity(sessionId, entry, row.now.getTime());
    return activeSession(sessionId, entry);
  }

  /**
   * Activity is batched (SessionActivityBuffer); it is due once the last write is a touch
   * interval old, and urgent when the idle deadline this instance knows is so near that the
   * next tick could come too late for another instance that re-reads the row.
   */
  private noteActivity(sessionId: string, session: CachedSession, now: number): void {
    // Never urgent once the idle deadline has reached the absolute one: no write can move it,
    // and each request of the session's last minute wrote at once until 0.23.0.
    const urgent = session.idleExpiresAt < session.absoluteExpiresAt && session.idleExpiresAt - now < this.touchIntervalMs + DEADLINE_MARGIN_MS * 2;
    if (urgent || activityDue(session.lastSeenAt, now, this.touchIntervalMs)) this.activity.record(sessionId, now, urgent);
  }

  /**
   * This instance's own activity writes move deadlines later: the cache follows (no NOTIFY is
   * sent for that), for the sessions no invalidation reached while the write was on its way.
   */
  private followActivityWrite(sessionIds: string[]): (outcome: ActivityWriteOutcome | undefined) => void {
    const tickets = this.cache.beginWrite(sessionIds);
    return (outcome) => {
      const written = new Map(outcome?.writes.map((w) => [w.sessionId, w]));
      for (const ticket of tickets) {
        const w = written.get(ticket.sessionId);
        this.cache.completeWrite(ticket, w && { idleExpiresAt: w.idleExpiresAt.getTime(), lastSeenAt: w.lastSeenAt.getTime() });
      }
      // Not written: ended or past its deadline; the next check reads the row.
      for (const id of outcome?.missing ?? []) this.cache.invalidateSession(id);
    };
  }

  /**
   * Exchanges a refresh token for a new one (rotation) and extends the idle deadline, never
   * the absolute one. The conditional UPDATE is the race arbiter: of two concurrent
   * refreshes with one token, exactly one matches the row. Presenting a token that was
   * already exchanged ends the whole session (OAuth 2.0 Security BCP, section 4.14.2).
   */
  async refresh(refreshToken: string, client: ClientContext): Promise<IssuedSession> {
    if (!looksLikeRefreshToken(refreshToken)) {
      this.refreshFailures.malformed++;
      this.refusals?.count(client.ipAddress, 'refreshUnknown');
      throw new UnauthorizedException(INVALID_REFRESH);
    }
    const presentedHash = hashRefreshToken(refreshToken);
    const nextToken = generateRefreshToken();

    const rotated = await this.dataSource.transaction(async (em) => {
      const session = await this.rotate(em, presentedHash, nextToken, 'refresh');
      if (session) await this.audit.record(em, { type: 'TOKEN_REFRESH', userId: session.userId, sessionId: session.id, client });
      return session;
    });
    if (rotated) return { session: rotated, refreshToken: nextToken };

    const reason = await this.explainFailedRefresh(presentedHash, client);
    this.refreshFailures[reason]++;
    // No session to name: only summed per client address (a known session's failure is REFRESH_FAILED).
    if (reason === 'unknown') this.refusals?.count(client.ipAddress, 'refreshUnknown');
    throw new UnauthorizedException(INVALID_REFRESH);
  }

  /**
   * The user proved their password again in this session (step-up, RFC 9470): auth_time
   * becomes now, and the refresh token is rotated as by a refresh, so the one held until now
   * counts as reused if it comes back. Records REAUTHENTICATED in the same transaction. 401
   * when the session ended (or expired) since the request's check.
   */
  async reauthenticate(auth: Pick<ActiveSession, 'userId' | 'sessionId'>, client: ClientContext): Promise<IssuedSession> {
    const nextToken = generateRefreshToken();
    const session = await this.dataSource.transaction(async (em) => {
      // The row lock keeps a concurrent refresh from exchanging this token before it is rotated.
      const {
        rows: [current],
      } = await sql<{ refresh_token_hash: string }>(em, `SELECT refresh_token_hash FROM sessions WHERE id = $1 AND user_id = $2 FOR UPDATE`, [
        auth.sessionId,
        auth.userId,
      ]);
      const rotated = current ? await this.rotate(em, current.refresh_token_hash, nextToken, 'reauthenticate') : undefined;
      if (rotated) await this.audit.record(em, { type: 'REAUTHENTICATED', userId: rotated.userId, sessionId: rotated.id, client });
      return rotated;
    });
    if (!session) throw new SessionNotActiveException();
    return { session, refreshToken: nextToken };
  }

  /**
   * The rotation shared by refresh and reauthentication, in the caller's transaction: the
   * session whose refresh token hashes to `currentHash` gets `nextToken` instead, the old hash
   * joins rotated_refresh_tokens (presenting it again is reuse), and the idle deadline moves
   * later, never the absolute one. Only an active session matches; the conditional UPDATE is
   * the race arbiter (of two rotations of one token, exactly one matches the row). A refresh
   * also needs its token unexpired; a reauthentication, which proved the password, does not,
   * and renews auth_time.
   */
  private async rotate(
    em: EntityManager,
    currentHash: string,
    nextToken: string,
    cause: 'refresh' | 'reauthenticate',
  ): Promise<SessionEntity | undefined> {
    // The old hash is recorded as rotated in the same statement (a data-modifying CTE always
    // runs; it inserts nothing when no session matched): one round trip fewer per refresh,
    // and each costs the service about a tenth of a millisecond of CPU (docs/benchmarks.md).
    // Times are this statement's, not the transaction's start (a reauthentication's waited for
    // the row lock first), and last_seen_at and the idle deadline only ever move later: a
    // rotation that waited for the row lock behind a later write (another instance's activity,
    // which sets them from its own later clock) moved both back until 0.24.1, which also made
    // the trigger NOTIFY every instance (an idle deadline moved earlier). So no cache's
    // deadline, read from the row or from an activity write, can be later than the row's.
    const { rows } = await sql<SessionRow>(
      em,
      `WITH rotated AS (
         UPDATE sessions
            SET refresh_token_hash = $2,
                refresh_expires_at = LEAST(statement_timestamp() + make_interval(secs => $3), absolute_expires_at),
                idle_expires_at = GREATEST(idle_expires_at, LEAST(statement_timestamp() + make_interval(secs => $4), absolute_expires_at)),
                last_seen_at = GREATEST(last_seen_at, statement_timestamp()),
                auth_time = CASE WHEN $5::boolean THEN now() ELSE auth_time END
          WHERE refresh_token_hash = $1 AND ended_at IS NULL
            AND idle_expires_at > statement_timestamp() AND absolute_expires_at > statement_timestamp()
            AND ($5::boolean OR refresh_expires_at > statement_timestamp())
          RETURNING ${SESSION_COLUMNS}
       ), recorded AS (
         INSERT INTO rotated_refresh_tokens (token_hash, session_id) SELECT $1, id FROM rotated
       )
       SELECT * FROM rotated`,
      [currentHash, hashRefreshToken(nextToken), this.refreshTtl, this.idleTtl, cause === 'reauthenticate'],
      // Prepared: planning this statement took about as long as running it, on every refresh.
      { prepareAs: 'sessionary_session_rotate_and_record' },
    );
    return rows.length ? toEntity(rows[0]) : undefined;
  }

  /**
   * Sessions ended by a statement this instance just ran (the cleanup's): it stops honouring
   * them at once, before the trigger's NOTIFY reaches every instance at commit.
   */
  forgetEnded(sessionIds: readonly string[]): void {
    for (const id of sessionIds) this.cache.invalidateSession(id);
  }

  /** Ends one active session; false when there was nothing to end (unknown, not the owner's, ended or expired). */
  async end(target: { sessionId: string; ownerId?: string }, options: EndSessionOptions): Promise<boolean> {
    return (await this.endSessions(target, options)).length === 1;
  }

  /**
   * Ends active sessions with their reason and one audit event each, atomically; in the
   * caller's transaction when given one. The conditional UPDATE makes concurrent ends of one
   * session record exactly one event. A session already past its deadline is left for expiry
   * to record, so every end keeps its true reason. Returns the ended sessions' ids.
   */
  async endSessions(target: SessionTarget, options: EndSessionOptions, em?: EntityManager): Promise<string[]> {
    if (!em) {
      const ended = await this.dataSource.transaction((tx) => this.endSessions(target, options, tx));
      // Once more after the commit: a request of this instance that read the row between the
      // UPDATE and the commit saw it still active and may have cached it, before this returns
      // (a logout's 204) and before the NOTIFY comes back to this instance's listener.
      for (const id of ended) this.cache.invalidateSession(id);
      return ended;
    }
    const { ids, events } = await this.endWithoutRecording(target, options, em);
    await this.audit.record(em, ...events);
    return ids;
  }

  /** endSessions() but for its audit events, which the caller must record in the same transaction. */
  private async endWithoutRecording(
    target: SessionTarget | { sessionIds: string[] },
    options: EndSessionOptions,
    em: EntityManager,
  ): Promise<{ ids: string[]; events: AuditEventInput[] }> {
    // A user's sessions all at once take the user's row first, as a login does before it locks
    // that user's sessions (makeRoomForOneMore): otherwise the two lock the same sessions in
    // different orders (the login by last use, the UPDATE by index order) and PostgreSQL ends
    // one of them as a deadlock, a 500 that could be "log out everywhere else" (until 0.22.0).
    // A session acting on others (not the cleanup, not a logout) must still be active: see
    // requireActingSession. Every user row concerned is locked first, in id order, as every
    // writer of a user's sessions takes its user's row first: the target's (ending one other
    // session too: the FOR SHARE and the UPDATE would otherwise lock two sessions in the
    // opposite order of a password change's UPDATE) and the acting session's user's (two admins
    // revoking each other took each other's session FOR SHARE in opposite orders: a deadlock,
    // which PostgreSQL ended with an error, a 500).
    const targetUser = 'userId' in target ? target.userId : 'sessionId' in target && options.actorSessionId ? target.ownerId : undefined;
    const actorUser = options.actorSessionId ? await userOfSession(em, options.actorSessionId) : undefined;
    for (const userId of [...new Set([targetUser, actorUser].filter((id): id is string => id !== undefined))].sort()) {
      await this.users.lockForSessionChange(em, userId);
    }
    if (options.actorSessionId) await requireActingSession(em, options.actorSessionId);
    if (options.actorRole) {
      const { rows } = await sql<{ role: string }>(em, `SELECT role FROM users WHERE id = $1`, [actorUser]);
      if (rows[0]?.role !== options.actorRole) throw new ActorRoleChangedException(rows[0]?.role ?? 'none');
    }
    const [which, params] =
      'sessionId' in target
        ? ['id = $2 AND ($3::uuid IS NULL OR user_id = $3::uuid)', [target.sessionId, target.ownerId ?? null]]
        : 'userId' in target
          ? ['user_id = $2 AND ($3::uuid IS NULL OR id <> $3::uuid)', [target.userId, target.exceptSessionId ?? null]]
          : ['id = ANY($2::uuid[])', [target.sessionIds]];
    const { rows } = await sql<{ id: string; user_id: string }>(
      em,
      // statement_timestamp(), not now() (the transaction's start): after waiting for the users'
      // rows, a session whose idle deadline passed meanwhile is the cleanup's, with its true
      // reason, not this end's (until 0.24.2 an end-all batch of seconds took such sessions as its own).
      `UPDATE sessions SET ended_at = now(), end_reason = $1
        WHERE ended_at IS NULL AND idle_expires_at > statement_timestamp() AND ${which}
        RETURNING id, user_id`,
      [options.reason, ...params],
    );
    // This instance stops answering them from its cache now; the trigger's NOTIFY tells every
    // instance at commit (and endSessions() invalidates again after its own commit).
    for (const r of rows) this.cache.invalidateSession(r.id);
    const events = rows.map((r) => ({
      type: options.event,
      userId: r.user_id,
      sessionId: r.id,
      client: options.client,
      // The caller's metadata first: the reason (and the actor) are the end's own, which a
      // caller's `reason` overrode in the event and the domain event until 0.22.0, while the
      // session row kept the real one.
      metadata: {
        ...options.metadata,
        reason: options.reason,
        ...(options.actorSessionId && options.actorSessionId !== r.id ? { bySessionId: options.actorSessionId } : {}),
      },
    }));
    return { ids: rows.map((r) => r.id), events };
  }

  private async makeRoomForOneMore(em: EntityManager, userId: string, client: ClientContext): Promise<{ ids: string[]; events: AuditEventInput[] }> {
    // Locking the user row serialises this user's logins: two concurrent ones cannot both
    // count the same free place (a NO KEY UPDATE lock, so a concurrent refresh's audit insert,
    // which holds the very session this login may end, is not blocked). The sessions to end
    // are locked here, before the first audit event takes the user's chain head: a refresh
    // locks its session and then the head, so taking the head first and a session after
    // could deadlock with it.
    await this.users.lockForSessionChange(em, userId);
    const { rows } = await sql<{ id: string }>(
      em,
      // As above: active as the statement runs, after the wait for the user's row.
      `SELECT id FROM sessions
        WHERE user_id = $1 AND ended_at IS NULL AND idle_expires_at > statement_timestamp()
        ORDER BY last_seen_at DESC, created_at DESC
       OFFSET $2
          FOR UPDATE`,
      [userId, this.maxPerUser - 1],
    );
    if (!rows.length) return { ids: [], events: [] };
    return this.endWithoutRecording({ sessionIds: rows.map((r) => r.id) }, { reason: 'session_limit', event: 'SESSION_REVOKED', client }, em);
  }

  /** Ends one session that is past its deadline; no-op when it is not (or already ended). */
  private async endIfExpired(sessionId: string): Promise<void> {
    await this.dataSource.transaction(async (em) => {
      const { rows } = await sql<{ user_id: string; end_reason: SessionEndReason }>(
        em,
        `UPDATE sessions
            SET ended_at = idle_expires_at,
                end_reason = CASE WHEN idle_expires_at < absolute_expires_at THEN 'idle_timeout' ELSE 'absolute_timeout' END
          WHERE id = $1 AND ended_at IS NULL AND idle_expires_at <= now()
          RETURNING user_id, end_reason`,
        [sessionId],
      );
      if (!rows.length) return;
      this.cache.invalidateSession(sessionId);
      await this.audit.record(em, {
        type: 'SESSION_EXPIRED',
        userId: rows[0].user_id,
        sessionId,
        metadata: { reason: rows[0].end_reason, detectedBy: 'request' },
      });
    });
  }

  /**
   * A refresh failed. Garbage (no known session) is only counted. A rotated-out token of an
   * active session is reuse: the session ends (REFRESH_TOKEN_REUSE). Otherwise the token
   * belongs to a session that is over: an overdue one is ended with its reason, and one
   * REFRESH_FAILED is recorded per session and AUDIT_REFUSAL_WINDOW (BoundedAuditService), in its own
   * transaction; nothing else changes. The client's answer is the same 401 in every case.
   */
  private async explainFailedRefresh(presentedHash: string, client: ClientContext): Promise<RefreshFailureReason> {
    const {
      rows: [known],
    } = await sql<{ id: string; user_id: string; end_reason: SessionEndReason | null; rotated: boolean; state: RefreshFailureReason | null }>(
      this.dataSource.manager,
      `SELECT s.id, s.user_id, s.end_reason, k.rotated,
              CASE WHEN s.ended_at IS NOT NULL THEN 'ended'
                   WHEN s.idle_expires_at <= now() THEN
                     CASE WHEN s.idle_expires_at < s.absolute_expires_at THEN 'idle_timeout' ELSE 'absolute_timeout' END
                   WHEN s.refresh_expires_at <= now() THEN 'refresh_expired'
              END AS state
         FROM (SELECT session_id AS id, true AS rotated FROM rotated_refresh_tokens WHERE token_hash = $1
               UNION ALL
               SELECT id, false FROM sessions WHERE refresh_token_hash = $1) AS k
         JOIN sessions s ON s.id = k.id
        LIMIT 1`,
      [presentedHash],
    );
    if (!known) return 'unknown';
    if (known.rotated && (known.state === null || known.state === 'refresh_expired')) {
      const ended = await this.end({ sessionId: known.id }, { reason: 'refresh_token_reuse', event: 'REFRESH_TOKEN_REUSE', client });
      if (ended) this.logger.warn(`Refresh token reuse detected; session ${known.id} ended`);
      return 'reused';
    }
    // The current token of an active session that no longer matched: a concurrent refresh or end won.
    if (known.state === null) return 'other';
    if (known.state === 'idle_timeout' || known.state === 'absolute_timeout') await this.endIfExpired(known.id);
    try {
      await this.boundedAudit.record({
        type: 'REFRESH_FAILED',
        userId: known.user_id,
        sessionId: known.id,
        client,
        metadata: {
          reason: known.state,
          ...(known.state === 'ended' && known.end_reason ? { endReason: known.end_reason } : {}),
          presented: known.rotated ? 'rotated' : 'current',
        },
      });
    } catch (error) {
      // The answer stays the same 401; the failure to audit is the operator's to see.
      this.logger.error('Recording REFRESH_FAILED failed', error instanceof Error ? error.stack : String(error));
    }
    return known.state;
  }
}

function activeSession(sessionId: string, s: CachedSession): ActiveSession {
  return {
    userId: s.userId,
    sessionId,
    role: s.role,
    expiresAt: new Date(s.idleExpiresAt),
    absoluteExpiresAt: new Date(s.absoluteExpiresAt),
  };
}
