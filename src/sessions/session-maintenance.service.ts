import { Injectable } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource, EntityManager } from 'typeorm';
import { cleanupChainKey } from '../audit/audit-chain';
import { AuditService } from '../audit/audit.service';
import { sql } from '../database/sql';
import { SessionEndReason } from './session.entity';
import { type EndSessionOptions, SessionsService } from './sessions.service';

/**
 * Sessions ended and deleted in bulk: the cleanup task's batches (overdue sessions ended with
 * their reason, long-ended ones deleted) and the operator's end-all. Each batch is one
 * transaction with its audit events; SKIP LOCKED lets instances take disjoint batches.
 */
@Injectable()
export class SessionMaintenanceService {
  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly audit: AuditService,
    private readonly sessions: SessionsService,
  ) {}

  /**
   * Ends every active session of every user (an operator's emergency stop, e.g. after a
   * leaked JWT secret), in batches so no transaction grows unbounded. Returns how many ended.
   */
  async endAllSessions(options: EndSessionOptions, batchSize = 1000): Promise<number> {
    // Sessions opened after the command started do not keep it going (logins go on meanwhile).
    const { rows: started } = await sql<{ now: Date }>(this.dataSource.manager, 'SELECT now() AS now');
    let total = 0;
    for (;;) {
      const { users, ended } = await this.dataSource.transaction(async (em) => {
        const { rows } = await sql<{ user_id: string }>(
          em,
          // In user_id order: each user's row is locked in turn (endSessions), so two of these
          // running at once take them in the same order.
          `SELECT DISTINCT user_id FROM (
             SELECT user_id FROM sessions
              WHERE ended_at IS NULL AND idle_expires_at > now() AND created_at <= $2
              LIMIT $1) AS s
            ORDER BY user_id`,
          [batchSize, started[0].now],
        );
        let count = 0;
        for (const { user_id } of rows) count += (await this.sessions.endSessions({ userId: user_id }, options, em)).length;
        return { users: rows.length, ended: count };
      });
      total += ended;
      // Done when none is left to select, not when a batch ended none: its sessions may all
      // have passed their idle deadline, or been ended by someone else, between the selection
      // (the transaction's start) and their UPDATE (the statement's time), and until 0.28.0 the
      // command then stopped with other sessions still active. Each batch moves on: the next
      // one's start is past every deadline this one found passed.
      if (users === 0) return total;
    }
  }

  /**
   * Ends up to `limit` sessions past their deadline, each with its reason and one
   * SESSION_EXPIRED event. SKIP LOCKED lets concurrent callers take disjoint batches.
   * The session ended at its deadline, so that is what ended_at records.
   *
   * `lane` (the lane's number and the number of lanes) takes only the sessions of the users
   * that hash to that lane, so that batches running side by side never share a user. The
   * events go to the lane's own audit chain (cleanupChainKey), one head a batch.
   */
  async endExpiredSessions(limit: number, lane: { index: number; of: number } = { index: 0, of: 1 }): Promise<number> {
    return this.dataSource.transaction(async (em) => {
      // Without waiting for the WAL flush (a tenth to a quarter of a batch's time at 1M users):
      // a crash may lose the last batches, whose sessions are past their deadlines anyway (no
      // instance honours them) and are ended again, with their events, by the next tick. Their
      // WAL precedes any later synchronous commit, so a checkpoint never covers a lost event.
      await sql(em, `SET LOCAL synchronous_commit = off`);
      const { rows } = await sql<{ id: string; user_id: string; end_reason: SessionEndReason }>(
        em,
        `WITH due AS (
           SELECT id FROM sessions
            WHERE ended_at IS NULL AND idle_expires_at <= now()
              AND ($2::int = 1 OR abs(hashtext(user_id::text) % $2::int) = $3::int)
            ORDER BY idle_expires_at
            LIMIT $1
              FOR UPDATE SKIP LOCKED)
         UPDATE sessions s
            SET ended_at = s.idle_expires_at,
                end_reason = CASE WHEN s.idle_expires_at < s.absolute_expires_at THEN 'idle_timeout' ELSE 'absolute_timeout' END
           FROM due WHERE s.id = due.id
         RETURNING s.id, s.user_id, s.end_reason`,
        [limit, lane.of, lane.index],
      );
      this.sessions.forgetEnded(rows.map((r) => r.id));
      await this.audit.recordInSharedChain(
        em,
        cleanupChainKey(lane.index),
        rows.map((r) => ({
          type: 'SESSION_EXPIRED' as const,
          userId: r.user_id,
          sessionId: r.id,
          metadata: { reason: r.end_reason, detectedBy: 'cleanup' },
        })),
      );
      return rows.length;
    });
  }

  /** How many sessions are active now: what end-all-sessions would end (the CLI says so before it is confirmed). */
  async countActive(): Promise<number> {
    const { rows } = await sql<{ active: number }>(
      this.dataSource.manager,
      'SELECT count(*)::int AS active FROM sessions WHERE ended_at IS NULL AND idle_expires_at > now()',
    );
    return rows[0].active;
  }

  /**
   * Whether any session is active, so that a token may be in use (the key ring asks this once,
   * when it is created, to know whether tokens signed before it must keep verifying).
   */
  async anyActive(em: EntityManager = this.dataSource.manager): Promise<boolean> {
    const { rows } = await sql<{ active: boolean }>(
      em,
      'SELECT EXISTS (SELECT 1 FROM sessions WHERE ended_at IS NULL AND absolute_expires_at > now()) AS active',
    );
    return rows[0].active;
  }

  /**
   * Deletes up to `limit` sessions that ended more than `retentionSeconds` ago.
   *
   * The rows are found by their physical address (`ctid`), not by `id`: the statement has locked
   * them (FOR UPDATE), so nothing can move them before it deletes them, and the delete writes no
   * index entry. Going back through `id` cost a descent of the primary key per row, a random
   * page at scale: at 10M sessions a batch of 500 took 24–56 ms that way and 18–21 ms this way
   * (`EXPLAIN ANALYZE`, cold after a `CHECKPOINT`).
   */
  async deleteEndedSessions(retentionSeconds: number, limit: number): Promise<number> {
    const { count } = await sql(
      this.dataSource.manager,
      `DELETE FROM sessions WHERE ctid = ANY (ARRAY(
         SELECT ctid FROM sessions
          WHERE ended_at IS NOT NULL AND ended_at < now() - make_interval(secs => $1)
          ORDER BY ended_at
          LIMIT $2
            FOR UPDATE SKIP LOCKED))`,
      [retentionSeconds, limit],
    );
    return count;
  }
}
