import { setTimeout as sleep } from 'node:timers/promises';
import { EntityManager } from 'typeorm';
import { rowsOf } from '../database/sql';

/** The longest pause between two looks at the transactions being waited out. */
const POLL_MAX_MS = 500;

/**
 * A seq up to which audit_events is settled: the greatest seq handed out so far, returned once
 * every transaction that had taken a seq when it was read has ended. An event takes its seq in
 * its INSERT, before it waits for a lock on its partition, so max(seq) alone can miss a
 * transaction that took a lower seq and commits later; past this point none can: a snapshot
 * taken afterwards holds every event with a seq up to the returned one that will ever exist, and
 * every event written later has a greater seq. And durable: returned once the WAL written up to
 * then is on disk (walFlushed), so no crash can take back an event up to it.
 *
 * Which transactions those are, PostgreSQL shows exactly: nextval() locks the sequence
 * (RowExclusiveLock, held by the top-level transaction until it ends, even when the savepoint
 * that took the value is rolled back) before it hands out a value, so every transaction holding
 * a seq up to the one read holds that lock when pg_locks is read afterwards. pg_locks shows every
 * role's locks to every role. Waited for are the holders of that lock: the writers of events
 * (the service's, or a host's through AuditService.record), and anything that read the
 * sequence's value through a function that takes the same lock (pg_sequence_last_value(), the
 * pg_sequences view) in a transaction still open. Not another application's or a DBA's
 * transaction on the same database otherwise, not a pg_dump (which reads the sequence as a
 * relation), not an export streaming to a slow client (0.22.0; before, every running
 * transaction of the database was waited for, and another role's only with pg_read_all_stats).
 *
 * Null, to be read as "not settled", when that cannot be shown: a transaction still running
 * after `timeoutMs`, a prepared (two-phase) transaction holding the lock, a sequence that hands
 * out cached values (CACHE > 1: a session could still take a lower value later, without a lock
 * then), or a wait that `signal` aborted. Call it outside a transaction, and take the snapshot
 * that relies on it afterwards: one taken before it returns may miss events up to the seq.
 */
export async function settledAuditSeq(em: EntityManager, timeoutMs: number, signal?: AbortSignal): Promise<string | null> {
  const [sequence] = await rowsOf<{ oid: string; last_value: string | null; cache: string }>(
    em,
    `SELECT s.seqrelid::int8::text AS oid, pg_sequence_last_value(s.seqrelid)::text AS last_value, s.seqcache::text AS cache
       FROM pg_sequence s WHERE s.seqrelid = pg_get_serial_sequence('audit_events', 'seq')::regclass`,
  );
  if (!sequence || sequence.cache !== '1') return null;
  // Read after the seq: whatever took a seq up to it holds the sequence's lock or has ended. A
  // weaker lock (AccessShareLock: reading the sequence, as pg_dump does) hands out nothing. A
  // prepared transaction's locks have no pid, and no virtual transaction id to wait on.
  const [holders] = await rowsOf<{ vxids: string[]; prepared: boolean }>(
    em,
    `SELECT COALESCE(array_agg(DISTINCT l.virtualtransaction) FILTER (WHERE l.pid IS NOT NULL), '{}') AS vxids,
            COALESCE(bool_or(l.pid IS NULL), false) AS prepared
       FROM pg_locks l
      WHERE l.locktype = 'relation' AND l.relation = $1::int8::oid AND l.granted
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND l.mode NOT IN ('AccessShareLock', 'RowShareLock')
        AND l.pid IS DISTINCT FROM pg_backend_pid()`,
    [sequence.oid],
  );
  if (holders.prepared) return null;
  const deadline = Date.now() + timeoutMs;
  const preparedMeanwhile = async () => {
    // PREPARE TRANSACTION ends the virtual transaction id while the transaction, its seq and
    // the sequence's lock live on (then without a pid) until COMMIT/ROLLBACK PREPARED.
    const [{ prepared }] = await rowsOf<{ prepared: boolean }>(
      em,
      `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'relation' AND relation = $1::int8::oid AND granted AND pid IS NULL
                        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS prepared`,
      [sequence.oid],
    );
    return prepared;
  };
  for (let pause = 10; holders.vxids.length; pause = Math.min(pause * 2, POLL_MAX_MS)) {
    // Each transaction holds its own virtual transaction id's lock until it ends.
    const [{ remaining }] = await rowsOf<{ remaining: number }>(
      em,
      `SELECT count(*)::int AS remaining FROM pg_locks WHERE locktype = 'virtualxid' AND virtualxid = ANY($1::text[])`,
      [holders.vxids],
    );
    if (!remaining) return (await preparedMeanwhile()) || !(await walFlushed(em, deadline, signal)) ? null : (sequence.last_value ?? '0');
    if (Date.now() >= deadline || signal?.aborted) return null;
    try {
      await sleep(Math.min(pause, Math.max(deadline - Date.now(), 1)), undefined, { signal });
    } catch {
      return null; // aborted: the service is shutting down
    }
  }
  return (await walFlushed(em, deadline, signal)) ? (sequence.last_value ?? '0') : null;
}

/**
 * Whether the WAL written so far is on disk, waiting for it until `deadline`. A transaction
 * that committed with `synchronous_commit = off` (the session cleanup's batches) has ended, yet
 * a crash within the WAL writer's next rounds (up to three times `wal_writer_delay`, 600 ms by
 * default) loses it: a piece shipped, or exported after a seq, in that time carried events the
 * database then never had, and the next events took their positions, so the receiver's pieces
 * stopped linking and shipping stopped for good (until 0.25.0). The commits of every
 * transaction waited out above are before the WAL's insert position read here.
 */
async function walFlushed(em: EntityManager, deadline: number, signal?: AbortSignal): Promise<boolean> {
  const [{ lsn }] = await rowsOf<{ lsn: string }>(em, `SELECT pg_current_wal_insert_lsn()::text AS lsn`);
  for (let pause = 5; ; pause = Math.min(pause * 2, 100)) {
    const [{ flushed }] = await rowsOf<{ flushed: boolean }>(em, `SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn AS flushed`, [lsn]);
    if (flushed) return true;
    if (Date.now() >= deadline || signal?.aborted) return false;
    try {
      await sleep(Math.min(pause, Math.max(deadline - Date.now(), 1)), undefined, { signal });
    } catch {
      return false;
    }
  }
}
