import { createHash, createHmac, createSecretKey, type Hash, type KeyObject, timingSafeEqual } from 'node:crypto';

/**
 * The audit log's hash chain: pure functions shared by the writer, the sealer, the checkpoint
 * job and the verifier, so that all of them hash exactly the same bytes.
 *
 * One chain per user (chain key: the user id) and one for events without a user
 * (GLOBAL_CHAIN), so that writers for different users never wait for each other; and one per
 * lane of the session cleanup (cleanupChainKey), whose batches end the sessions of hundreds of
 * users at a time.
 */

/** The chain of events that name no user (failed logins of unknown accounts, IP locks). */
export const GLOBAL_CHAIN = 'global';
/** prev_hash of the first event of every chain. */
export const GENESIS_HASH = '0'.repeat(64);
/** PostgreSQL's text form of a timestamptz that the canonical form hashes: UTC, microseconds. */
export const PG_MICROS_UTC = `'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'`;

export interface ChainHeadRow {
  chain_key: string;
  position: string;
  hash: string;
  now: string;
  /** When the chain's newest event happened (null for heads last moved before 0.7.0, or by the sealer). */
  last_event_at: string | null;
}

/**
 * Locks the heads of the given chains (the keys sorted), creating missing ones, and returns
 * each head as it was, with the database's clock to the microsecond once the last lock is held.
 * Writers of one chain take turns (the lock is held until the transaction ends), so the chain
 * never forks, while other chains' writers never wait; two writers of overlapping sets (e.g.
 * two cleanup batches) lock in the same order and cannot deadlock.
 *
 * Existing heads are locked with FOR UPDATE, which writes no new row version (0.9.0's upsert,
 * `DO UPDATE SET position = h.position`, wrote one per head, and the append then wrote
 * another). Only the keys that lock found no head for go to the INSERT, which holds what it
 * creates as its own: until 0.13.8 every key went through the INSERT first, whose conflict
 * check cost an index descent per head that nearly always exists (a cleanup batch's 250 heads
 * at 1M chains: 5.7–6.3 ms before, 3.8–4.3 ms after, `EXPLAIN ANALYZE`). A head that another
 * transaction created after this statement's snapshot is in neither part: lockHeads asks again
 * for it (the next statement sees it). The outer query reads `locked` first and `created`
 * after it, so the last row's clock is read once every lock is held.
 */
export const LOCK_HEADS = `
  WITH locked AS (
    SELECT chain_key, position, hash, last_event_at FROM audit_chain_heads
     WHERE chain_key = ANY($1::text[]) ORDER BY chain_key FOR UPDATE
  ), created AS (
    INSERT INTO audit_chain_heads (chain_key, position, hash)
    SELECT k, 0, $2 FROM unnest($1::text[]) AS k
     WHERE k NOT IN (SELECT chain_key FROM locked) ORDER BY k
    ON CONFLICT (chain_key) DO NOTHING
    RETURNING chain_key, position, hash, last_event_at
  )
  SELECT h.chain_key, h.position::text AS position, h.hash,
         to_char(clock_timestamp() AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS now,
         to_char(h.last_event_at AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS last_event_at
    FROM (SELECT * FROM locked UNION ALL SELECT * FROM created) AS h`;

/**
 * LOCK_HEADS for one chain whose head exists (nearly every append: a user's own events): a plain
 * row lock, no INSERT to try first. No row: the head is missing (LOCK_HEADS creates it). The
 * clock is read in the outer query, so after the lock is held, as in LOCK_HEADS.
 */
export const LOCK_ONE_HEAD = `
  SELECT h.chain_key, h.position::text AS position, h.hash,
         to_char(clock_timestamp() AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS now,
         to_char(h.last_event_at AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS last_event_at
    FROM (SELECT chain_key, position, hash, last_event_at FROM audit_chain_heads WHERE chain_key = $1 FOR UPDATE) AS h`;

/** Microseconds since the epoch of a PG_MICROS_UTC string (exact: below 2^53 until the year 2255). */
export function microsOfTime(text: string): number {
  return Date.parse(`${text.slice(0, 23)}Z`) * 1000 + Number(text.slice(23, 26));
}

/** The PG_MICROS_UTC string of a time in microseconds since the epoch (what PostgreSQL will store and give back). */
export function timeOfMicros(micros: number): string {
  const millis = Math.floor(micros / 1000);
  return `${new Date(millis).toISOString().slice(0, 23)}${String(micros - millis * 1000).padStart(3, '0')}Z`;
}

export function chainKeyOf(userId: string | null): string {
  return userId === null ? GLOBAL_CHAIN : userId.toLowerCase();
}

const CLEANUP_CHAIN_PREFIX = 'cleanup:';

/**
 * The chain of the session cleanup's SESSION_EXPIRED events of one lane (since 0.14.0). In
 * their users' chains, a batch of 250 sessions locked and moved 250 heads, each a random page
 * of a million-row table: a fifth of the batch's time when warm, half of it right after the
 * bench's seed, its pages cold (the audit bench at 50M events). In its lane's chain a batch appends to one head,
 * which the instance remembers, in one statement. Only one instance cleans up at a time (an
 * advisory lock), and lanes never share a session, so a lane's head is never waited for. No
 * user id can take this form (user ids are UUIDs, 'global' is the other key).
 */
export function cleanupChainKey(lane: number): string {
  return `${CLEANUP_CHAIN_PREFIX}${lane}`;
}

/** Whether a chain holds events of many users (a cleanup lane's), not one user's. */
export function isSharedChain(chainKey: string): boolean {
  return chainKey.startsWith(CLEANUP_CHAIN_PREFIX);
}

/**
 * Whether an event naming `userId` belongs in chain `chainKey`: its user's chain (or the global
 * one), or a shared chain, whose events may name any user. Where an event's user was changed,
 * this names the break in a user's chain; in a shared chain the event's hash does (it covers
 * the user).
 */
export function belongsToChain(chainKey: string, userId: string | null): boolean {
  return isSharedChain(chainKey) || chainKeyOf(userId) === chainKey;
}

/** A stored event as the chain sees it: every column but `seq` (which PostgreSQL assigns). */
export interface ChainedEvent {
  id: string;
  type: string;
  userId: string | null;
  sessionId: string | null;
  ipAddress: string | null;
  userAgent: string | null;
  /** Canonical JSON (see canonicalJson). */
  metadata: string;
  /** `YYYY-MM-DDTHH:MM:SS.ffffffZ`, what PostgreSQL stores, to the microsecond. */
  createdAt: string;
  chainKey: string;
  position: number;
}

/**
 * The stored columns the canonical form covers, as the sealer and the verifier read them back
 * (created_at in the exact text that was hashed), so that both hash the same bytes.
 */
export const STORED_EVENT_COLUMNS = `id, type, user_id, session_id, ip_address, user_agent, metadata,
  to_char(created_at AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS created_at`;

/** A row selected with STORED_EVENT_COLUMNS. */
export interface StoredEventRow {
  id: string;
  type: string;
  user_id: string | null;
  session_id: string | null;
  ip_address: string | null;
  user_agent: string | null;
  metadata: unknown;
  created_at: string;
}

/** A stored row as the chain sees it at a given place in a chain. */
export function chainedEventOf(row: StoredEventRow, chainKey: string, position: number): ChainedEvent {
  return {
    id: row.id,
    type: row.type,
    userId: row.user_id,
    sessionId: row.session_id,
    ipAddress: row.ip_address,
    userAgent: row.user_agent,
    metadata: canonicalJson(row.metadata),
    createdAt: row.created_at,
    chainKey,
    position,
  };
}

/**
 * JSON with object keys sorted by UTF-16 code units at every depth, no whitespace, and
 * JSON.stringify's number and string forms. What jsonb gives back (it reorders keys and keeps
 * numbers exactly) canonicalises to the same text as what was written.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value ?? null);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.keys(value as Record<string, unknown>)
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
  return `{${entries.join(',')}}`;
}

/**
 * Version 1 of the canonical form: a JSON array of every stored field, in a fixed order, with
 * null for an absent value, uuids in lower case and metadata as canonical JSON:
 * `["sessionary.audit.v1", chainKey, position, id, type, userId, sessionId, ipAddress,
 * userAgent, metadata, createdAt]`. JSON's quoting makes it unambiguous (no field can end early).
 */
export function canonicalEvent(e: ChainedEvent): string {
  return canonicalFields(e.chainKey, e.position, e.id, e.type, e.userId, e.sessionId, e.ipAddress, e.userAgent, e.metadata, e.createdAt);
}

/** canonicalEvent from the fields themselves (the verifier's inner loop: no event object). */
export function canonicalFields(
  chainKey: string,
  position: number,
  id: string,
  type: string,
  userId: string | null,
  sessionId: string | null,
  ipAddress: string | null,
  userAgent: string | null,
  metadata: string,
  createdAt: string,
): string {
  const lower = (s: string | null) => (s === null ? null : s.toLowerCase());
  const head = JSON.stringify(['sessionary.audit.v1', chainKey, position, lower(id), type, lower(userId), lower(sessionId), ipAddress, userAgent]);
  return `${head.slice(0, -1)},${metadata},${JSON.stringify(createdAt)}]`;
}

/** hash = HMAC-SHA-256(key, prev_hash ‖ canonical form), hex; prev_hash is 64 hex digits, so the join is unambiguous. */
export function eventHash(key: string, prevHash: string, e: ChainedEvent): string {
  return createHmac('sha256', keyObjectOf(key)).update(prevHash).update(canonicalEvent(e)).digest('hex');
}

/**
 * Whether a stored hash is the event's: eventHash compared in constant time, on the raw
 * digest (the verifier's inner loop: no hex string and one buffer less per event).
 */
export function matchesEventHash(key: string, storedHash: string | null, prevHash: string, e: ChainedEvent): boolean {
  return matchesCanonicalHash(key, storedHash, prevHash, canonicalEvent(e));
}

/** matchesEventHash of an event already in its canonical form. */
export function matchesCanonicalHash(key: string, storedHash: string | null, prevHash: string, canonical: string): boolean {
  // Lower case, as written (a regular expression here was 2 % of a verification).
  if (storedHash === null || storedHash.length !== 64 || storedHash !== storedHash.toLowerCase()) return false;
  // Decoding stops at the first character that is not hex: anything but 64 hex digits is short.
  const stored = Buffer.from(storedHash, 'hex');
  if (stored.length !== 32) return false;
  // One update of the joined text: each update is a call into C++.
  const digest = createHmac('sha256', keyObjectOf(key))
    .update(prevHash + canonical)
    .digest();
  return timingSafeEqual(digest, stored);
}

// The key as a KeyObject, made once: createHmac re-encodes a string key on every call, which
// was a tenth of an event's HMAC. A process holds one key (two in tests), so this stays tiny.
const KEY_OBJECTS = new Map<string, KeyObject>();
function keyObjectOf(key: string): KeyObject {
  let keyObject = KEY_OBJECTS.get(key);
  if (!keyObject) {
    if (KEY_OBJECTS.size >= 16) KEY_OBJECTS.clear();
    keyObject = createSecretKey(Buffer.from(key, 'utf8'));
    KEY_OBJECTS.set(key, keyObject);
  }
  return keyObject;
}

/**
 * Constant-time comparison of two hex MACs (a stored one may have any length and any
 * characters: the lengths compared are the bytes', since timingSafeEqual throws on two of
 * different lengths, which a stored value of 64 characters, one of them not ASCII, was until
 * 0.23.0: an uncaught exception in a row callback of the verification, where it should have
 * been a broken log).
 */
export function sameMac(a: string | null, b: string): boolean {
  if (a === null) return false;
  const [x, y] = [Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')];
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * A running SHA-256 over a list of (chain key, position, hash) sorted by chain key: the chain
 * heads of a checkpoint, or a month's chain bases. The first line names which, so that one list
 * can never pass for the other.
 */
export class ChainListDigest {
  private readonly hash: Hash;
  chains = 0;
  events = 0;

  constructor(domain: 'sessionary.audit.heads.v1' | 'sessionary.audit.bases.v1') {
    this.hash = createHash('sha256').update(`${domain}\n`);
  }

  add(chainKey: string, position: number, hash: string): void {
    this.hash.update(`${chainKey} ${position} ${hash}\n`);
    this.chains++;
    this.events += position;
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

/** The digest of a checkpoint's chain heads. */
export class HeadsDigest extends ChainListDigest {
  constructor() {
    super('sessionary.audit.heads.v1');
  }
}

/** What a month's base set states (audit_base_sets); its MAC covers every field. */
export interface BaseSetFields {
  /** The month's first day, `YYYY-MM-DD`. */
  month: string;
  chains: number;
  /** Events in the month when the set was prepared, and the greatest seq among them: what the drop checks again. */
  events: number;
  maxSeq: string;
  /** ChainListDigest('sessionary.audit.bases.v1') of the set's rows. */
  digest: string;
}

export function baseSetMac(key: string, s: BaseSetFields): string {
  const canonical = JSON.stringify(['sessionary.audit.bases.v1', s.month, s.chains, s.events, s.maxSeq, s.digest]);
  return createHmac('sha256', keyObjectOf(key)).update(canonical).digest('hex');
}

/** What a checkpoint states; its `mac` covers every other field, including the previous checkpoint's mac. */
export interface Checkpoint {
  id: number;
  createdAt: string;
  chains: number;
  events: number;
  maxSeq: string;
  digest: string;
  prevMac: string;
  mac: string;
}

export function checkpointMac(key: string, c: Omit<Checkpoint, 'mac'>): string {
  const canonical = JSON.stringify(['sessionary.audit.checkpoint.v1', c.id, c.createdAt, c.chains, c.events, c.maxSeq, c.digest, c.prevMac]);
  return createHmac('sha256', key).update(canonical).digest('hex');
}
