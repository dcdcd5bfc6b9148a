import type { Client, PoolClient } from 'pg';
import { streamRows } from '../database/stream-rows';
import { belongsToChain, canonicalFields, canonicalJson, GENESIS_HASH, matchesCanonicalHash, sameMac } from './audit-chain';
import { legacyBaseMac } from './audit-base-sets';
import { numbersSurviveParse } from './jsonb-numbers';

/**
 * One pass of the audit verification: every chain whose key is in [from, to), walked in the
 * order its events lie in the table (one sequential scan), with each chain's state in memory.
 *
 * Walking chains in key and position order read the events through the (chain_key, chain_pos)
 * index, a random heap page per event: about 5 µs of PostgreSQL's time per event, where a
 * sequential scan takes about 1.5 (measured on 1.1M events), and worse once the table outgrows
 * memory. In table order a chain's events mostly come in position order (they are appended);
 * one that comes early (a row placed in a page's free space) waits in its chain's `pending`
 * until the ones before it arrive, so each chain is still checked in position order and the
 * first broken event of a chain is the same as in a walk by position.
 *
 * Pure of Nest and TypeORM: it runs on a pg client in a worker thread (AuditVerifierService
 * splits the chains into passes and runs them side by side in one exported snapshot) or on
 * the service's own connection.
 */

/** A pass's key range: from inclusive, to exclusive; null for unbounded. */
export interface PassRange {
  from: string | null;
  to: string | null;
}

export interface PassInput extends PassRange {
  key: string;
  /** The base set in force (its month), or null: chains start at their 0.8.0 base in the head, or their beginning. */
  baseMonth: string | null;
  /** At most this many early rows wait in `pending` across the pass's chains (default PENDING_LIMIT). */
  pendingLimit?: number;
  /**
   * The seq the latest checkpoint covers (its maxSeq: every event up to it was committed before
   * it copied the heads), when that checkpoint is authentic and of format 2 (settled); else null.
   */
  checkpointMaxSeq?: string | null;
}

/**
 * The early rows a pass holds by default: about 10 MB of rows. Appended rows come in order;
 * a few land early in pages' free space, far fewer than this.
 */
export const PENDING_LIMIT = 20_000;

/** Deferred chains walked by one query. */
const DEFERRED_GROUP = 1000;

/** A break, and where it is in chain order (key, then position; a chain's end after its events). */
export interface PassBreak {
  chainKey: string;
  position: number;
  eventId: string | null;
  reason: string;
  /** 'seq': an event whose seq is out of its place (also what a seq sequence set back leaves). */
  kind?: 'seq';
}

export interface PassResult {
  checked: number;
  chains: number;
  /** Events before the chains' bases (in months dropped by retention). */
  dropped: number;
  /** The first break in chain order among this pass's chains, or null. */
  broken: PassBreak | null;
  /** Chains walked by position after the scan, as their early rows would have passed `pendingLimit`. */
  deferred: number;
}

/**
 * An event's row as the pass reads it, every column as PostgreSQL's text: id, type, user_id,
 * session_id, ip_address, user_agent, metadata, created_at, chain_key, chain_pos, prev_hash, hash, seq.
 */
type EventRow = Array<string | null>;

/** An event on its way to being checked (kept in `pending` when it came before the one it follows). */
interface Pending {
  at: number;
  row: EventRow;
}

interface ChainState {
  /** Where the walk stands: the last position checked, its hash, event and seq (null: none checked yet). */
  position: number;
  hash: string;
  lastId: string | null;
  lastSeq: bigint | null;
  events: number;
  pending: Map<number, Pending> | undefined;
  /**
   * The position and hash the latest checkpoint recorded of this chain, when the walk has yet to
   * pass it: the event there must be that one, also when the chain goes on past it (else its
   * tail was deleted, its head set back and the chain grown again past the recorded head).
   */
  recorded: { position: number; hash: string } | undefined;
  /**
   * The position the latest checkpoint recorded of this chain (0: none). An event past it was
   * written after that checkpoint, so its seq is past the checkpoint's maxSeq.
   */
  checkpointed: number;
  /** Walked by position after the scan (see PENDING_LIMIT); until then only duplicates are looked for. */
  deferred: boolean;
  broken: boolean;
}

/** The order of two breaks: by chain key, then position. */
export function breaksFirst(a: PassBreak, b: PassBreak): PassBreak {
  if (a.chainKey !== b.chainKey) return a.chainKey < b.chainKey ? a : b;
  return a.position <= b.position ? a : b;
}

/**
 * jsonb's text as canonical JSON (most events carry none: `{}` is the same in both). A number
 * that JSON.parse would round (the service never writes one) leaves the text as it is, which is
 * no canonical form (it has spaces), so the event fails its hash: until 0.26.0 `5` altered to
 * `5.0000000000000001` verified as intact.
 */
function canonicalMetadata(text: string): string {
  if (text === '{}') return text;
  return numbersSurviveParse(text) ? canonicalJson(JSON.parse(text)) : text;
}

/** `YYYY-MM-DD HH:MM:SS[.f]+00` (timestamptz with TimeZone UTC, DateStyle ISO) as the chain hashes it: PG_MICROS_UTC. */
const PG_UTC_TIME = /^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?\+00$/;
export function microsUtcOf(text: string): string {
  const m = PG_UTC_TIME.exec(text);
  // Not a time the service writes (an altered row): hashed as it is, so the event fails its hash.
  if (!m) return text;
  return `${m[1]}T${m[2]}.${(m[3] ?? '').padEnd(6, '0')}Z`;
}

const END = Number.MAX_SAFE_INTEGER;

/**
 * Settings of a pass's transaction: no statement timeout (one pass is one long scan);
 * timestamps in the text microsUtcOf reads; and every scan from a table's first page. With
 * synchronized scans (PostgreSQL's default for tables over a quarter of shared_buffers), a
 * scan joins one already under way on the same table, say another worker's, and wraps around
 * at the end: each chain's later events then come before its earlier ones. At 50M events that
 * deferred nearly every chain to a walk by index. No parallel plan either (a pass's narrow
 * key range could make one look cheap): its workers' rows interleave in no order.
 */
export const VERIFY_PASS_SETTINGS = [
  `SET LOCAL statement_timeout = 0`,
  `SET LOCAL TimeZone = 'UTC'`,
  `SET LOCAL DateStyle = 'ISO, YMD'`,
  `SET LOCAL synchronize_seqscans = off`,
  `SET LOCAL max_parallel_workers_per_gather = 0`,
];

export async function runVerifyPass(client: Client | PoolClient, input: PassInput): Promise<PassResult> {
  const range = `chain_key >= COALESCE($1, '') AND ($2::text IS NULL OR chain_key < $2)`;
  const bounds = [input.from, input.to];
  const result: PassResult = { checked: 0, chains: 0, dropped: 0, broken: null, deferred: 0 };
  const pendingLimit = input.pendingLimit ?? PENDING_LIMIT;
  const checkpointMaxSeq = input.checkpointMaxSeq ? BigInt(input.checkpointMaxSeq) : null;
  let pendingRows = 0;
  const deferred: string[] = [];
  const brokenAt = (chainKey: string, position: number, eventId: string | null, reason: string, kind?: 'seq') => {
    const found: PassBreak = { chainKey, position, eventId, reason, ...(kind ? { kind } : {}) };
    result.broken = result.broken ? breaksFirst(result.broken, found) : found;
  };

  // Each chain's start: its row in the base set in force, else (none in force) its 0.8.0 base
  // in its head, else its beginning; and where the latest checkpoint recorded it. The heads are
  // read again after the events, for their ends, so that memory holds only where each chain
  // stands (about 350 bytes a chain, measured at 1M chains with strings made as pg makes them;
  // about 120 more for a chain that moved since the last checkpoint, which holds its recorded
  // position and hash: simulated).
  const chains = new Map<string, ChainState>();
  await streamRows(
    client,
    `SELECT COALESCE(h.chain_key, b.chain_key), h.chain_key IS NOT NULL, b.position, b.hash, h.base_position, h.base_hash, h.base_mac,
            c.position, c.hash, h.position
       FROM (SELECT * FROM audit_chain_heads WHERE ${range}) h
       FULL JOIN (SELECT chain_key, position, hash FROM audit_chain_bases WHERE month = $3 AND ${range}) b ON b.chain_key = h.chain_key
       LEFT JOIN (SELECT chain_key, position, hash FROM audit_checkpoint_heads WHERE ${range}) c ON c.chain_key = h.chain_key`,
    [...bounds, input.baseMonth],
    (r) => {
      const [chainKey, hasHead, position, hash, legacyPosition, legacyHash, legacyMac, recordedPosition, recordedHash, headPosition] = r as [
        string,
        string,
        string | null,
        string | null,
        string | null,
        string | null,
        string | null,
        string | null,
        string | null,
        string | null,
      ];
      if (hasHead !== 't') {
        brokenAt(chainKey, 0, null, `Chain ${chainKey} has a base but no head: its head was deleted, or the base inserted`);
        return;
      }
      let start = position === null ? undefined : { position: Number(position), hash: hash! };
      if (!start && !input.baseMonth && legacyPosition !== null) {
        start = { position: Number(legacyPosition), hash: legacyHash ?? '' };
        if (!sameMac(legacyMac, legacyBaseMac(input.key, chainKey, start.position, start.hash))) {
          brokenAt(chainKey, 0, null, `Chain ${chainKey}: its base (where it starts after dropped months) does not match its MAC: it was altered`);
        }
      }
      start ??= { position: 0, hash: GENESIS_HASH };
      result.dropped += start.position;
      // Held only for a chain whose head went past its recorded position (those that moved since
      // the last checkpoint: few, so memory stays about what it was); where the chain or its
      // head ends at the recorded position, the end check compares the hash. A recorded
      // position at or before the start lies in months dropped since (their bases stand for them).
      const recorded =
        recordedPosition !== null && Number(recordedPosition) > start.position && Number(headPosition) > Number(recordedPosition)
          ? { position: Number(recordedPosition), hash: recordedHash! }
          : undefined;
      chains.set(chainKey, {
        position: start.position,
        hash: start.hash,
        lastId: null,
        lastSeq: null,
        events: 0,
        pending: undefined,
        recorded,
        checkpointed: recordedPosition === null ? 0 : Number(recordedPosition),
        deferred: false,
        broken: false,
      });
    },
  );

  /** Checks an event in its chain's position order (as a walk by position would): its user, its link, its hash. */
  const checkInOrder = (chainKey: string, chain: ChainState, e: Pending): void => {
    const [id, type, userId, sessionId, ipAddress, userAgent, metadata, createdAt, , , prevHash, hash, seqText] = e.row;
    const seq = BigInt(seqText!);
    if (!belongsToChain(chainKey, userId)) {
      chain.broken = true;
      brokenAt(chainKey, e.at, id, `Event ${id} names user ${userId ?? 'none'} but belongs to chain ${chainKey}: it was moved to another user`);
    } else if (prevHash !== chain.hash) {
      chain.broken = true;
      brokenAt(
        chainKey,
        e.at,
        id,
        `Event ${id} does not link to the event before it in chain ${chainKey}: events were deleted, inserted or reordered`,
      );
    } else if (
      !matchesCanonicalHash(
        input.key,
        hash,
        prevHash,
        canonicalFields(chainKey, e.at, id!, type!, userId, sessionId, ipAddress, userAgent, canonicalMetadata(metadata!), microsUtcOf(createdAt!)),
      )
    ) {
      chain.broken = true;
      brokenAt(chainKey, e.at, id, `Event ${id} does not match its hash: it was altered, or written without the key`);
    } else if (seq < 1n || (chain.lastSeq !== null && seq <= chain.lastSeq)) {
      // The seq is outside the hash, but a writer takes it under the chain's head lock, so it
      // rises with the position; checkpoints find the chains that moved by their new seqs, and
      // shipping and incremental exports go by seq. An event deleted and inserted again,
      // unchanged, with a seq taken from below (OVERRIDING SYSTEM VALUE) escaped all three and
      // verified as intact until 0.24.1.
      chain.broken = true;
      brokenAt(
        chainKey,
        e.at,
        id,
        `Event ${id} has seq ${seq}, ${seq < 1n ? 'which no writer gives' : `not after seq ${chain.lastSeq} of the event before it in chain ${chainKey}`}: it was inserted again out of its place in the log`,
        'seq',
      );
    } else if (checkpointMaxSeq !== null && e.at > chain.checkpointed && seq <= checkpointMaxSeq) {
      // Past the position the latest checkpoint recorded, yet with a seq that checkpoint covers:
      // the seq was taken from below. Such an event is in no checkpoint (the next one looks for
      // the chains that moved by their events' seqs), is never shipped, and its chain's tail
      // could later be cut back to the recorded head unseen (until 0.26.0 it verified as intact).
      chain.broken = true;
      brokenAt(
        chainKey,
        e.at,
        id,
        `Event ${id} has seq ${seq}, which the latest checkpoint covers (through seq ${checkpointMaxSeq}), but is past position ${chain.checkpointed} ` +
          `that checkpoint recorded of chain ${chainKey}: it was inserted again out of its place in the log`,
        'seq',
      );
    } else if (chain.recorded?.position === e.at && !sameMac(chain.recorded.hash, hash!)) {
      chain.broken = true;
      brokenAt(chainKey, e.at, id, `Chain ${chainKey}: the event at the checkpointed position ${e.at} is not the one the checkpoint recorded`);
    } else {
      chain.position = e.at;
      chain.hash = hash!;
      chain.lastId = id;
      chain.lastSeq = seq;
      if (chain.recorded?.position === e.at) chain.recorded = undefined;
    }
  };

  const gapBefore = (chainKey: string, chain: ChainState, at: number, id: string | null): void => {
    chain.broken = true;
    brokenAt(
      chainKey,
      at,
      id,
      `Event ${id} is at position ${at} of chain ${chainKey}, where ${chain.position + 1} was expected: events before it were deleted or moved`,
    );
  };
  const heldBy = (chainKey: string, at: number, id: string): void =>
    brokenAt(chainKey, at, id, `Event ${id} is at position ${at} of chain ${chainKey}, which another event holds: events were inserted or moved`);

  /** A chain's end against its head, and against the position and hash its last checkpoint recorded. */
  const checkEnd = (
    chainKey: string,
    chain: ChainState,
    head: { position: number; hash: string; checkpointPosition: number | null; checkpointHash: string | null },
  ): void => {
    result.chains += chain.events > 0 ? 1 : 0;
    if (chain.broken) return;
    if (chain.pending?.size) {
      let first = END;
      for (const at of chain.pending.keys()) first = Math.min(first, at);
      gapBefore(chainKey, chain, first, chain.pending.get(first)!.row[0]);
      return;
    }
    if (chain.events === 0) {
      if (head.position > chain.position) {
        brokenAt(chainKey, END, null, `Chain ${chainKey} has no events, but its head is at position ${head.position}: its events were deleted`);
      } else if (head.checkpointPosition !== null && head.checkpointPosition > chain.position) {
        // A checkpoint recorded the chain past where it now starts: every event since was
        // deleted, and the head set back to match (until 0.20.2 that verified as intact).
        brokenAt(
          chainKey,
          END,
          null,
          `Chain ${chainKey} has no events, but a checkpoint recorded position ${head.checkpointPosition}: its events were deleted`,
        );
      } else if (head.position < chain.position || !sameMac(head.hash, chain.hash)) {
        brokenAt(
          chainKey,
          END,
          null,
          `Chain ${chainKey} has no events, and its head is not where its base says it ends: the head or the base was altered`,
        );
      }
      return;
    }
    const after = chain.lastId ? `after event ${chain.lastId}` : 'from its start';
    if (head.checkpointPosition !== null && chain.position < head.checkpointPosition) {
      brokenAt(
        chainKey,
        END,
        null,
        `Chain ${chainKey} ends at position ${chain.position}, but a checkpoint recorded position ${head.checkpointPosition}: events ${after} were deleted`,
      );
    } else if (head.checkpointPosition === chain.position && !sameMac(head.checkpointHash, chain.hash)) {
      brokenAt(
        chainKey,
        chain.position,
        chain.lastId,
        `Chain ${chainKey}: the event at the checkpointed position ${chain.position} is not the one the checkpoint recorded`,
      );
    } else if (head.position !== chain.position || !sameMac(head.hash, chain.hash)) {
      brokenAt(
        chainKey,
        END,
        null,
        `Chain ${chainKey} ends at position ${chain.position}, but its head is at position ${head.position}: events ${after} were deleted, or the head was altered`,
      );
    }
  };

  const onRow = (row: EventRow): void => {
    result.checked++;
    const id = row[0]!;
    const chainKey = row[8]!;
    const at = Number(row[9]);
    const chain = chains.get(chainKey);
    if (!chain) {
      brokenAt(chainKey, at, id, `Event ${id} is in chain ${chainKey}, which has no head: it was inserted or moved`);
      return;
    }
    chain.events++;
    if (chain.broken) return;
    if (at <= chain.position || chain.pending?.has(at)) {
      // Not the chain's end: a break before it may still come, so the chain goes on.
      heldBy(chainKey, at, id);
      return;
    }
    if (chain.deferred) return;
    if (at !== chain.position + 1) {
      if (pendingRows < pendingLimit) {
        (chain.pending ??= new Map()).set(at, { at, row });
        pendingRows++;
      } else {
        pendingRows -= chain.pending?.size ?? 0;
        chain.pending = undefined;
        chain.deferred = true;
        deferred.push(chainKey);
      }
      return;
    }
    checkInOrder(chainKey, chain, { at, row });
    // Those that came early and follow it now.
    let next: Pending | undefined;
    while (!chain.broken && chain.pending && (next = chain.pending.get(chain.position + 1))) {
      chain.pending.delete(next.at);
      pendingRows--;
      checkInOrder(chainKey, chain, next);
    }
    // A broken chain is checked no further: its early rows are let go.
    if (chain.broken && chain.pending) {
      pendingRows -= chain.pending.size;
      chain.pending = undefined;
    }
  };

  const columns = `id, type, user_id, session_id, ip_address, user_agent, metadata, created_at, chain_key, chain_pos, prev_hash, hash, seq`;

  await streamRows(client, `SELECT ${columns} FROM audit_events WHERE ${range}`, bounds, onRow);

  // The deferred chains, walked by position from where each stood, DEFERRED_GROUP chains a
  // query (one round trip and one plan for many; the rows stream through, none is held).
  result.deferred = deferred.length;
  const unbroken = deferred.filter((k) => !chains.get(k)!.broken);
  for (let i = 0; i < unbroken.length; i += DEFERRED_GROUP) {
    let chainKey = '';
    let chain: ChainState | undefined;
    /** Where the chain stood when it was deferred: the scan saw every row up to there (and any copy of one). */
    let from = 0;
    await streamRows(
      client,
      `SELECT ${columns} FROM audit_events WHERE chain_key = ANY($1::text[]) ORDER BY chain_key, chain_pos, id`,
      [unbroken.slice(i, i + DEFERRED_GROUP)],
      (row) => {
        if (row[8] !== chainKey) {
          chainKey = row[8]!;
          chain = chains.get(chainKey)!;
          from = chain.position;
        }
        const at = Number(row[9]);
        if (chain!.broken || at <= from) return;
        const id = row[0]!;
        if (at <= chain!.position) {
          // Two events at one position: nothing after it comes first in chain order.
          chain!.broken = true;
          heldBy(chainKey, at, id);
        } else if (at !== chain!.position + 1) {
          gapBefore(chainKey, chain!, at, id);
        } else {
          checkInOrder(chainKey, chain!, { at, row });
        }
      },
    );
  }

  // Each head, with what the latest checkpoint recorded of its chain; a chain the checkpoint
  // recorded that has no head any more had its head deleted (with its events, or they would
  // have been found without one above).
  await streamRows(
    client,
    `SELECT COALESCE(h.chain_key, c.chain_key), h.position, h.hash, c.position, c.hash
       FROM (SELECT * FROM audit_chain_heads WHERE ${range}) h
       FULL JOIN (SELECT * FROM audit_checkpoint_heads WHERE ${range}) c ON c.chain_key = h.chain_key`,
    bounds,
    (r) => {
      const [chainKey, position, hash, checkpointPosition, checkpointHash] = r as [
        string,
        string | null,
        string | null,
        string | null,
        string | null,
      ];
      if (position === null) {
        brokenAt(
          chainKey,
          0,
          null,
          `Chain ${chainKey} has no head, but a checkpoint recorded it at position ${checkpointPosition}: its head and events were deleted`,
        );
        return;
      }
      const chain = chains.get(chainKey);
      if (chain)
        checkEnd(chainKey, chain, {
          position: Number(position),
          hash: hash!,
          checkpointPosition: checkpointPosition === null ? null : Number(checkpointPosition),
          checkpointHash,
        });
    },
  );
  return result;
}
