import type { EntityManager } from 'typeorm';
import { SessionNotActiveException } from '../common/session-not-active.exception';
import { sql } from '../database/sql';

/**
 * In the transaction of a change a session asks for (an email change, ending the user's other
 * sessions, an admin's revocation), before the change: that session is still not ended, and
 * stays so until the commit (FOR SHARE: an end waits for this transaction, then ends it after
 * the change). Otherwise SessionNotActiveException, the 401 of every request of an ended
 * session. Between the guard's check and this transaction lies a bcrypt check of hundreds of
 * milliseconds, in which the owner's password change may end the session: until 0.24.0 a thief
 * holding it could still change the email, or end every session the owner had just opened.
 *
 * Only `ended_at`: the idle deadline stored may lag the activity this or another instance has
 * not written yet (SessionActivityBuffer), which the guard already counted.
 *
 * Callers lock the user's row first (UsersService.lockForSessionChange), as a password change
 * and a login do, so that the locks are taken in one order and never deadlock.
 */
export async function requireActingSession(em: EntityManager, sessionId: string): Promise<void> {
  const { rows } = await sql(em, `SELECT 1 FROM sessions WHERE id = $1 AND ended_at IS NULL FOR SHARE`, [sessionId]);
  if (!rows.length) throw new SessionNotActiveException();
}

/** The user a session belongs to (read without a lock, to lock that user's row first), or undefined when there is no such session. */
export async function userOfSession(em: EntityManager, sessionId: string): Promise<string | undefined> {
  const { rows } = await sql<{ user_id: string }>(em, `SELECT user_id FROM sessions WHERE id = $1`, [sessionId]);
  return rows[0]?.user_id;
}
