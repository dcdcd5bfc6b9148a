import { BeforeApplicationShutdown, Inject, Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { Cron, CronExpression } from '@nestjs/schedule';
import { normalizeIp } from '@nestjs/throttler';
import { SCHEDULED_JOBS, SESSIONARY_CRON_JOBS } from '../sessionary/scheduled-jobs';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource, EntityManager } from 'typeorm';
import { type CounterKeyDigest, counterKeyDigest } from '../common/counter-key-digest';
import { RetryAfterException } from '../common/retry-after.exception';
import { StoppableJob } from '../common/stoppable-job';
import type { AppConfig } from '../config/config';
import { deleteInBatches } from '../database/batched-delete';
import { isDatabaseUnavailable } from '../database/pg-errors';
import { sql } from '../database/sql';
import { JobHealth } from '../common/job-health';

export type ThrottleScope = 'identifier' | 'ip';

interface Counter {
  scope: ThrottleScope;
  key: string;
  max: number;
}

/** How long a successful login keeps its client (identifier + IP) known. */
const KNOWN_CLIENT_DAYS = 30;

/** Each table's prune: batches of this many rows, for at most half the hour between runs. */
const PRUNE_LIMITS = { batchSize: 1000, budgetMs: 30 * 60_000 };

/** One login attempt's claim on its counters, settled by succeeded() (a failure needs nothing more). */
export interface LoginAttempt {
  counters: Counter[];
  /** This identifier from this IP; remembered when the attempt succeeds. */
  knownClientKey: string | null;
  /** The client's address as counted (an IPv6 client's /64), or null when unknown. */
  client: string | null;
  /** Locks this attempt set, by scope (when its failure would be the one too many). */
  locksSet: Array<{ scope: ThrottleScope; lockedUntil: Date; seconds: number }>;
}

interface CounterRow {
  key: string;
  failures: number;
  last_failure_at: Date;
  locked_until: Date | null;
  now: Date;
}

/**
 * Throttles failed logins per identifier (whether or not such an account exists, so a 429
 * tells nothing) and per client IP, in PostgreSQL so every instance shares the counts
 * (ASVS 6.3.1). An attempt is counted as a failure *before* the password is checked and
 * taken back if it succeeds: so parallel guesses cannot outrun the count, and no more than
 * the maximum are ever checked. Beyond the maximum, a back-off starts at LOGIN_BACKOFF_BASE
 * and doubles with each further failure, up to LOGIN_FAILURE_WINDOW; after a quiet window the
 * count starts again. A client that logged in for this identifier from the same IP within 30
 * days is not held by the identifier's back-off (only by its IP's), so an attacker elsewhere
 * cannot lock the user out at all (ASVS 6.1.1).
 */
@Injectable()
export class LoginThrottleService implements BeforeApplicationShutdown {
  private readonly logger = new Logger(LoginThrottleService.name);
  private readonly pruning = new StoppableJob<number>();
  /** Rows this instance's prunes deleted, by table (for /metrics). */
  readonly pruned = { login_throttle: 0, login_known_clients: 0 };
  /** Prunes that failed, and when one last ran to its end (for /metrics). */
  readonly pruneHealth = new JobHealth();
  private readonly maxPerIdentifier: number;
  private readonly maxPerIp: number;
  private readonly windowSeconds: number;
  private readonly backoffBaseSeconds: number;
  /** The tables hold keyed digests, never what was typed nor the client's address. */
  private readonly digest: CounterKeyDigest;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    config: ConfigService<AppConfig, true>,
    @Inject(SCHEDULED_JOBS) private readonly scheduledJobs: boolean,
  ) {
    this.maxPerIdentifier = config.get('LOGIN_MAX_FAILURES_PER_IDENTIFIER', { infer: true });
    this.maxPerIp = config.get('LOGIN_MAX_FAILURES_PER_IP', { infer: true });
    this.windowSeconds = config.get('LOGIN_FAILURE_WINDOW', { infer: true });
    this.backoffBaseSeconds = config.get('LOGIN_BACKOFF_BASE', { infer: true });
    this.digest = counterKeyDigest(config.get('PASSWORD_PEPPER', { infer: true }));
  }

  /**
   * Claims one attempt on each counter, or throws 429 when any of them is in back-off.
   * `accountOf`: the account the identifier names now (null: none), read in this transaction
   * only when the identifier is in back-off and this client is known for it.
   */
  async begin(identifier: string, ipAddress: string | null, accountOf: (em: EntityManager) => Promise<string | null>): Promise<LoginAttempt> {
    return this.dataSource.transaction(async (em) => {
      // Lower-cased by PostgreSQL's lower(), as the account lookup compares (UsersService.findByLogin):
      // every spelling that finds one account counts on one counter. JavaScript's toLowerCase()
      // differs outside ASCII ('İ' becomes two code points there, one in the database), and
      // gave such spellings of an existing account fresh counters of their own.
      const {
        rows: [{ normalised }],
      } = await sql<{ normalised: string }>(em, 'SELECT lower($1) AS normalised', [identifier]);
      const counters: Counter[] = [{ scope: 'identifier', key: this.digest(`identifier:${normalised}`), max: this.maxPerIdentifier }];
      // An IPv6 client is its /64, as for the request limit and the registrations: one host
      // holds a whole /64 and picks its low 64 bits at will (a fresh counter every 99
      // failures until 0.22.0), and a known client's privacy address changes within it.
      const client = ipAddress ? normalizeIp(ipAddress) : null;
      if (client) counters.push({ scope: 'ip', key: this.digest(`ip:${client}`), max: this.maxPerIp });
      const knownClientKey = this.knownClientKey(normalised, client);
      // Every transaction here touches its rows in key order, so two attempts never deadlock.
      counters.sort((x, y) => x.key.localeCompare(y.key));
      const keys = counters.map((c) => c.key);
      // Creates missing counters and row-locks all of them in one statement (a no-op
      // DO UPDATE locks the row, and copes with a concurrent delete, which a separate
      // INSERT ... DO NOTHING then SELECT ... FOR UPDATE would not). Row locks make the
      // check and the count one step.
      const { rows } = await sql<CounterRow>(
        em,
        `INSERT INTO login_throttle AS t (key, failures, last_failure_at)
         SELECT k, 0, now() FROM unnest($1::char(64)[]) WITH ORDINALITY AS u(k, i) ORDER BY i
         ON CONFLICT (key) DO UPDATE SET key = t.key
         RETURNING key, failures, last_failure_at, locked_until, now() AS now`,
        [keys],
      );
      const now = rows[0].now;
      const lockedMs = (row: CounterRow) => (row.locked_until ? row.locked_until.getTime() - now.getTime() : 0);
      const holding = [];
      for (const counter of counters) {
        const row = rows.find((r) => r.key === counter.key)!;
        if (lockedMs(row) <= 0) continue;
        if (counter.scope === 'identifier' && (await this.isKnownClient(em, knownClientKey, accountOf))) continue;
        holding.push(lockedMs(row));
      }
      if (holding.length) throw new RetryAfterException(Math.ceil(Math.max(...holding) / 1000), 'Too many failed logins; try again later');

      const attempt: LoginAttempt = { counters, knownClientKey, client, locksSet: [] };
      const counts = counters.map((counter) => {
        const row = rows.find((r) => r.key === counter.key)!;
        // Quiet since the last failure or the end of its back-off, whichever came later: a
        // back-off is no quiet time. Measured from the failure alone (until 0.25.0), a back-off
        // at its cap (LOGIN_FAILURE_WINDOW) ended as a quiet window did, and the counter started
        // again from zero: a full allowance of guesses after every cycle of back-offs (about
        // 5,000 a day from one address at the defaults, where about 200 were meant).
        const quietSince = Math.max(row.last_failure_at.getTime(), row.locked_until?.getTime() ?? 0);
        const quiet = now.getTime() - quietSince > this.windowSeconds * 1000;
        const failures = (quiet ? 0 : row.failures) + 1;
        let lockedUntil: Date | null = null;
        if (failures >= counter.max) {
          const seconds = Math.min(this.backoffBaseSeconds * 2 ** (failures - counter.max), this.windowSeconds);
          lockedUntil = new Date(now.getTime() + seconds * 1000);
          attempt.locksSet.push({ scope: counter.scope, lockedUntil, seconds });
        }
        return { key: counter.key, failures, lockedUntil };
      });
      // One statement for all counters (their rows are locked above): every round trip on
      // the login path costs both processes CPU that bcrypt would otherwise have.
      await sql(
        em,
        `UPDATE login_throttle AS t
            SET failures = c.failures, last_failure_at = $4, locked_until = c.locked_until
           FROM unnest($1::char(64)[], $2::int[], $3::timestamptz[]) AS c(key, failures, locked_until)
          WHERE t.key = c.key`,
        [counts.map((c) => c.key), counts.map((c) => c.failures), counts.map((c) => c.lockedUntil), now],
      );
      return attempt;
    });
  }

  /**
   * The password was right: the identifier's count starts again; the IP's loses this
   * attempt (one good account must not clear an IP that is guessing others) and any lock this
   * attempt set is lifted; this client becomes known for the identifier. One statement, so
   * atomic on its own; in the caller's transaction when given one (a login settles its attempt
   * in the transaction that opens its session: a login that fails to commit stays counted).
   *
   * `accountId`: a login's account, whose current-password checks (counted on `account:<id>`,
   * UsersService.verifyCurrentPassword) then know this client too. Without it a thief holding
   * a stolen access token could lock the account's counter from anywhere and keep its owner
   * from changing the password from where they had just logged in (until 0.24.0).
   */
  async succeeded(attempt: LoginAttempt, em: EntityManager = this.dataSource.manager, accountId?: string): Promise<void> {
    const counters = attempt.counters.map((counter) => ({
      key: counter.key,
      reset: counter.scope === 'identifier',
      lockSet: attempt.locksSet.find((l) => l.scope === counter.scope)?.lockedUntil ?? null,
    }));
    // The counters' rows are locked in key order first, as begin() locks them, so that two
    // attempts never deadlock (one UPDATE ... FROM alone would lock in its join's order). A
    // reset count is 0 rather than a deleted row: begin() treats both alike, prune() removes it.
    const known = [...new Set([attempt.knownClientKey, accountId ? this.knownClientKey(`account:${accountId.toLowerCase()}`, attempt.client) : null])]
      .filter((key): key is string => key !== null)
      .sort(); // rows in key order, as every writer takes them
    await sql(
      em,
      `WITH known AS (
         INSERT INTO login_known_clients (key, last_success_at, account)
         SELECT k, now(), $5 FROM unnest($1::char(64)[]) AS k
         ON CONFLICT (key) DO UPDATE SET last_success_at = now(), account = COALESCE(excluded.account, login_known_clients.account)
       ), locked AS (
         SELECT key FROM login_throttle WHERE key = ANY($2::char(64)[]) ORDER BY key FOR UPDATE
       )
       UPDATE login_throttle AS t
          SET failures = CASE WHEN c.reset THEN 0 ELSE GREATEST(t.failures - 1, 0) END,
              locked_until = CASE WHEN c.reset OR t.locked_until = c.lock_set THEN NULL ELSE t.locked_until END
         FROM locked JOIN unnest($2::char(64)[], $3::boolean[], $4::timestamptz[]) AS c(key, reset, lock_set) ON c.key = locked.key
        WHERE t.key = locked.key`,
      [
        known,
        counters.map((c) => c.key),
        counters.map((c) => c.reset),
        counters.map((c) => c.lockSet),
        accountId ? this.accountDigest(accountId) : null,
      ],
    );
  }

  /**
   * A password change: every place the account was logged into from loses its exemption from
   * the back-off (ASVS 6.3.1), but the client that changed it (with a session and the current
   * password, as good as a login), which becomes or stays known under each name the account
   * logs in by. Otherwise an attacker who logged in once with a phished password kept guessing
   * the new one from that address, held only by the address's limit, for 30 days after the
   * owner changed it (until 0.25.0). The price: the owner's other places are new places again
   * until their next login there (an attacker holding the identifier in back-off keeps them
   * out meanwhile, as any new place: SECURITY.md, Known gaps, 6.1.1). In the caller's
   * transaction, beside the change. A row an instance older than 0.25.0 writes during a rolling
   * upgrade names no account, so is not taken back, but exempts no one either (0.26.0).
   */
  async forgetOtherClients(em: EntityManager, account: { id: string; email: string; username: string }, keepIpAddress: string | null): Promise<void> {
    const client = keepIpAddress ? normalizeIp(keepIpAddress) : null;
    let keep: string[] = [];
    if (client) {
      const names = await this.loweredNames(em, account);
      keep = [`email:${names.email}`, `username:${names.username}`, `account:${account.id.toLowerCase()}`]
        .map((name) => this.knownClientKey(name, client)!)
        .sort(); // rows in key order, as every writer takes them
    }
    await sql(
      em,
      `WITH kept AS (
         INSERT INTO login_known_clients (key, last_success_at, account)
         SELECT k, now(), $1 FROM unnest($2::char(64)[]) AS k
         ON CONFLICT (key) DO UPDATE SET last_success_at = now(), account = excluded.account
       )
       DELETE FROM login_known_clients WHERE account = $1 AND key <> ALL($2::char(64)[])`,
      [this.accountDigest(account.id), keep],
    );
  }

  /**
   * A rename (UsersService.updateProfile): the client that made it, when it is a known place of
   * the account (logged into it, or a right current password, within 30 days), becomes known
   * under the account's new names as well, as of when it was last known there (not extended).
   * Without it the owner's own device was a new place for the new name until its next login
   * by it, held by the back-off an attacker failing that name had set. A client not known for
   * the account gains nothing: a stolen access token does not make its holder's address known.
   * In the caller's transaction, beside the change.
   */
  async carryKnownClientToNames(
    em: EntityManager,
    account: { id: string; email: string; username: string },
    ipAddress: string | null,
  ): Promise<void> {
    const client = ipAddress ? normalizeIp(ipAddress) : null;
    if (!client) return;
    const names = await this.loweredNames(em, account);
    const keys = [`email:${names.email}`, `username:${names.username}`].map((name) => this.knownClientKey(name, client)!).sort(); // key order, as every writer
    await sql(
      em,
      `INSERT INTO login_known_clients (key, last_success_at, account)
       SELECT k, known.last_success_at, known.account
         FROM login_known_clients AS known, unnest($1::char(64)[]) AS k
        WHERE known.key = $2 AND known.account = $3 AND known.last_success_at > now() - make_interval(days => $4)
        ORDER BY k
       ON CONFLICT (key) DO UPDATE
         -- A row of an account that gave the name up is this account's now, as of its own time.
         SET last_success_at = CASE WHEN login_known_clients.account = excluded.account
                                    THEN GREATEST(login_known_clients.last_success_at, excluded.last_success_at)
                                    ELSE excluded.last_success_at END,
             account = excluded.account`,
      [keys, this.knownClientKey(`account:${account.id.toLowerCase()}`, client), this.accountDigest(account.id), KNOWN_CLIENT_DAYS],
    );
  }

  /** The account's names lower-cased by PostgreSQL, as begin() counts a login's identifier. */
  private async loweredNames(em: EntityManager, account: { email: string; username: string }): Promise<{ email: string; username: string }> {
    const { rows } = await sql<{ email: string; username: string }>(em, 'SELECT lower($1) AS email, lower($2) AS username', [
      account.email,
      account.username,
    ]);
    return rows[0];
  }

  /** The account a known client logged into, as login_known_clients names it: a keyed digest, as its keys are. */
  private accountDigest(accountId: string): string {
    return this.digest(`known-account:${accountId.toLowerCase()}`);
  }

  /** An identifier (lower-cased as begin() counts it) from a client, as login_known_clients keys it. */
  private knownClientKey(normalisedIdentifier: string, client: string | null): string | null {
    return client ? this.digest(`known:${normalisedIdentifier}|${client}`) : null;
  }

  /**
   * Whether this client logged in by this identifier within 30 days, into the account the
   * identifier names now. A name is not an account: one an account gave up (a username or an
   * email changed) and another took kept the first account's places known for it until 0.26.0,
   * so an attacker could plant an exemption from a name's back-off before its new owner took it.
   * A row of an instance older than 0.25.0 names no account, and exempts no one.
   */
  private async isKnownClient(em: EntityManager, key: string | null, accountOf: (em: EntityManager) => Promise<string | null>): Promise<boolean> {
    if (!key) return false;
    const {
      rows: [known],
    } = await sql<{ account: string | null }>(
      em,
      `SELECT account FROM login_known_clients WHERE key = $1 AND last_success_at > now() - make_interval(days => $2)`,
      [key, KNOWN_CLIENT_DAYS],
    );
    if (!known?.account) return false;
    const account = await accountOf(em);
    return account !== null && known.account === this.accountDigest(account);
  }

  /**
   * Forgets counters quiet for a whole window, and clients not seen for 30 days. Every instance
   * runs it at the same hour: the batches' SKIP LOCKED splits the rows between them.
   */
  @Cron(CronExpression.EVERY_HOUR, { name: SESSIONARY_CRON_JOBS.loginThrottlePrune, waitForCompletion: true })
  async onPruneTick(): Promise<void> {
    // Off in this process: the application's scheduler may still fire it before ScheduledJobsCheck takes it out.
    if (this.scheduledJobs) await this.prune();
  }

  /** One run, as the job's tick does it; a run under way is joined, not repeated. */
  prune(): Promise<number> {
    return this.pruning.run((stop) => this.pruneInBatches(stop));
  }

  /** Lets a prune under way finish its batch before the database closes, and start no other. */
  async beforeApplicationShutdown(): Promise<void> {
    await this.pruning.stop();
  }

  private async pruneInBatches(stop: AbortSignal): Promise<number> {
    const limits = { ...PRUNE_LIMITS, stop };
    try {
      const counters = await deleteInBatches(
        this.dataSource.manager,
        {
          table: 'login_throttle',
          orderBy: 'last_failure_at',
          // Quiet as begin() judges it: a window after the failure and after its back-off's end.
          where: 'last_failure_at < now() - make_interval(secs => $1) AND (locked_until IS NULL OR locked_until < now() - make_interval(secs => $1))',
          params: [this.windowSeconds],
        },
        limits,
      );
      this.pruned.login_throttle += counters;
      this.pruned.login_known_clients += await deleteInBatches(
        this.dataSource.manager,
        {
          table: 'login_known_clients',
          orderBy: 'last_success_at',
          where: 'last_success_at < now() - make_interval(days => $1)',
          params: [KNOWN_CLIENT_DAYS],
        },
        limits,
      );
      this.pruneHealth.succeeded();
      return counters;
    } catch (error) {
      this.pruneHealth.failed();
      // An outage is the outage monitor's to report (once); a prune simply runs again next time.
      if (isDatabaseUnavailable(error)) this.logger.warn('Pruning login counters skipped: the database is unavailable');
      else this.logger.error('Pruning login counters failed', error instanceof Error ? error.stack : String(error));
      return 0;
    }
  }
}
