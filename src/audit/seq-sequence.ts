import { EntityManager } from 'typeorm';
import { rowsOf } from '../database/sql';

/** The sequence that hands out the events' seqs, as this connection may use it. */
export interface SeqSequence {
  /** Its name, qualified and quoted as pg_get_serial_sequence gives it (safe in SQL text). */
  name: string;
  /** The greatest value it has handed out (last_value, or one less before its first call). */
  handedOut: bigint;
  /** The greatest seq in the log. */
  greatestSeq: bigint;
  /** Whether this role may set it (setval). */
  settable: boolean;
}

/**
 * The events' seq sequence beside the greatest seq in the log, or null when this role may not
 * read it. Read as a relation (AccessShareLock): pg_sequence_last_value() would take the lock
 * that settledAuditSeq waits out, held to the end of the caller's transaction (a verification's
 * lasts minutes). A sequence row is read as it is now, not as the transaction's snapshot saw it.
 */
export async function readSeqSequence(em: EntityManager): Promise<SeqSequence | null> {
  const [found] = await rowsOf<{ name: string | null; readable: boolean | null; settable: boolean | null; greatest: string }>(
    em,
    `SELECT s.name, has_sequence_privilege(s.name, 'SELECT') AS readable, has_sequence_privilege(s.name, 'UPDATE') AS settable,
            (SELECT COALESCE(max(seq), 0)::text FROM audit_events) AS greatest
       FROM (SELECT pg_get_serial_sequence('audit_events', 'seq') AS name) s`,
  );
  if (!found?.name || !found.readable) return null;
  const [{ handed_out }] = await rowsOf<{ handed_out: string }>(
    em,
    `SELECT (CASE WHEN is_called THEN last_value ELSE last_value - 1 END)::text AS handed_out FROM ${found.name}`,
  );
  return { name: found.name, handedOut: BigInt(handed_out), greatestSeq: BigInt(found.greatest), settable: found.settable === true };
}
