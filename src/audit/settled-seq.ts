import { setTimeout as sleep } from 'node:timers/promises';
import { EntityManager } from 'typeorm';
import { rowsOf } from '../database/sql';

/** The longest pause between two looks at the transactions being waited out. */
const POLL_MAX_MS = 500;

/**
 * A seq up to which audit_events is settled: the greatest seq handed out so far, returned once
 * every transaction of this database that was running when it was read has ended (but those
 * idle without a transaction id, which hold no seq: see below). An event
 * takes its seq in its INSERT, before it waits for a lock on its partition, so max(seq) alone
 * can miss a transaction that took a lower seq and commits later; past this point none can: a
 * snapshot taken afterwards holds every event with a seq up to the returned one that will ever
 * exist, and every event written later has a greater seq. (CREATE INDEX CONCURRENTLY waits out
 * older transactions the same way, by their virtual transaction ids.)
 *
 * Null, to be read as "not settled", when that cannot be shown: a transaction still running
 * after `timeoutMs`, a prepared (two-phase) transaction, a sequence that hands out cached
 * values (CACHE > 1: a session could still take a lower value later), or a wait that `signal`
 * aborted. Call it outside a transaction, and take the snapshot that relies on it afterwards:
 * one taken before it returns may miss events up to the seq.
 */
export async function settledAuditSeq(em: EntityManager, timeoutMs: number, signal?: AbortSignal): Promise<string | null> {
  const [sequence] = await rowsOf<{ last_value: string | null; cache: string }>(
    em,
    `SELECT pg_sequence_last_value(s.seqrelid)::text AS last_value, s.seqcache::text AS cache
       FROM pg_sequence s WHERE s.seqrelid = pg_get_serial_sequence('audit_events', 'seq')::regclass`,
  );
  if (!sequence || sequence.cache !== '1') return null;
  // Read after the seq: whatever took a seq up to it is among these or has already ended.
  // Not waited for: a transaction idle between statements that has no transaction id (it wrote
  // nothing: an INSERT gets one as it writes its first row, after taking its seq, and is done
  // only after that; a later INSERT takes a seq above this one). So an export streaming to a
  // slow client, or a session left idle in a read-only transaction, does not hold a
  // checkpoint's maxSeq back. (One that failed is not listed at all: PostgreSQL ended it at the
  // error, its locks with it.) Any other state, one running a statement among them (an INSERT
  // waiting for its partition holds a seq and no id yet), or none known (track_activities
  // off), is waited for.
  const [running] = await rowsOf<{ vxids: string[]; prepared: boolean }>(
    em,
    `SELECT COALESCE(array_agg(l.virtualxid), '{}') AS vxids,
            EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE database = current_database()) AS prepared
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'virtualxid' AND l.mode = 'ExclusiveLock' AND l.granted
        AND a.datname = current_database() AND l.pid <> pg_backend_pid()
        AND NOT (a.state IS NOT DISTINCT FROM 'idle in transaction' AND a.backend_xid IS NULL)`,
  );
  if (running.prepared) return null;
  const deadline = Date.now() + timeoutMs;
  for (let pause = 10; running.vxids.length; pause = Math.min(pause * 2, POLL_MAX_MS)) {
    const [{ remaining }] = await rowsOf<{ remaining: number }>(
      em,
      `SELECT count(*)::int AS remaining FROM pg_locks WHERE locktype = 'virtualxid' AND virtualxid = ANY($1::text[])`,
      [running.vxids],
    );
    if (!remaining) break;
    if (Date.now() >= deadline || signal?.aborted) return null;
    try {
      await sleep(Math.min(pause, Math.max(deadline - Date.now(), 1)), undefined, { signal });
    } catch {
      return null; // aborted: the service is shutting down
    }
  }
  return sequence.last_value ?? '0';
}
