import { setTimeout as sleep } from 'node:timers/promises';
import { EntityManager } from 'typeorm';
import { rowsOf } from '../database/sql';

/** The longest pause between two looks at the transactions being waited out. */
const POLL_MAX_MS = 500;

/**
 * A seq up to which audit_events is settled: the greatest seq handed out so far, returned once
 * every transaction of this database that was running when it was read has ended. An event
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
  const [running] = await rowsOf<{ vxids: string[]; prepared: boolean }>(
    em,
    `SELECT COALESCE(array_agg(l.virtualxid), '{}') AS vxids,
            EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE database = current_database()) AS prepared
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'virtualxid' AND l.mode = 'ExclusiveLock' AND l.granted
        AND a.datname = current_database() AND l.pid <> pg_backend_pid()`,
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
