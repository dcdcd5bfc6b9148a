import type { EntityManager } from 'typeorm';
import { sql } from '../database/sql';
import { type ChainHeadRow, GENESIS_HASH, LOCK_HEADS, LOCK_ONE_HEAD } from './audit-chain';

/** A head created by another transaction is seen by the next statement; more tries mean something else is wrong. */
const ATTEMPTS = 4;

/**
 * LOCK_HEADS until every chain's head is locked: a head that another transaction created after
 * a statement's snapshot is neither locked nor created by that statement, so it is asked for
 * again. One chain goes by LOCK_ONE_HEAD first (about 18 µs less of PostgreSQL's CPU a call,
 * measured against 0.13.7's LOCK_HEADS, whose INSERT probed every key first; not measured
 * against 0.13.8's, whose INSERT gets no row then), and by LOCK_HEADS only when its head is
 * missing. Returns the heads in the order they were locked (the last one's `now` is the latest).
 *
 * Several chains are locked in key order, which every writer keeps, so that two never wait for
 * each other. A try that missed a head has locked the others already: asking for the missing one
 * alone would lock it after keys that sort after it, and a writer holding it and waiting for one
 * of those would deadlock with this one (until 0.20.2). So the try is undone (ROLLBACK TO its
 * savepoint releases its locks and the heads it created) and the next one asks for all of them.
 * Two round trips more, only for appends to several chains at once (a lock-out's events), rare.
 */
export async function lockHeads(em: EntityManager, keys: string[], prepareAs?: string): Promise<ChainHeadRow[]> {
  if (keys.length === 1) {
    const { rows } = await sql<ChainHeadRow>(em, LOCK_ONE_HEAD, keys, prepareAs ? { prepareAs: `${prepareAs}_one` } : {});
    if (rows.length) return rows;
  }
  const undoable = keys.length > 1;
  for (let attempt = 1; ; attempt++) {
    if (undoable) await sql(em, 'SAVEPOINT sessionary_lock_heads');
    const { rows } = await sql<ChainHeadRow>(em, LOCK_HEADS, [keys, GENESIS_HASH], prepareAs ? { prepareAs } : {});
    if (rows.length >= keys.length) {
      if (undoable) await sql(em, 'RELEASE SAVEPOINT sessionary_lock_heads');
      return rows;
    }
    if (undoable) await sql(em, 'ROLLBACK TO SAVEPOINT sessionary_lock_heads');
    if (attempt === ATTEMPTS) throw new Error(`the audit chain heads of ${keys.length - rows.length} chains could not be locked`);
  }
}
