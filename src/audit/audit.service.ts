import { createHash } from 'node:crypto';
import { BadRequestException, Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DataSource, EntityManager } from 'typeorm';
import { boundedClientContext, type ClientContext } from '../common/client-context';
import type { AppConfig } from '../config/config';
import { sql } from '../database/sql';
import { DomainEventPublisher } from '../events/domain-event-publisher';
import { domainEventOf } from '../events/domain-events';
import { auditEventId } from './audit-event-id';
import {
  canonicalJson,
  type ChainHeadRow,
  chainKeyOf,
  ChainedEvent,
  eventHash,
  isSharedChain,
  microsOfTime,
  PG_MICROS_UTC,
  timeOfMicros,
} from './audit-chain';
import { ChainHeadCache } from './chain-head-cache';
import { lockHeads } from './lock-heads';
import { RememberedHeadOdds } from './remembered-head-odds';
import { decodeCursor, encodeCursor } from './audit-cursor';
import { AUDIT_EVENT_TYPES, AuditEventEntity, AuditEventType, AuditMetadata } from './audit-event.entity';

export interface AuditEventInput {
  type: AuditEventType;
  userId: string | null;
  sessionId?: string | null;
  client?: ClientContext | null;
  metadata?: AuditMetadata;
}

/** Which events: the filters the list and the export share. */
export interface AuditFilter {
  userId?: string;
  type?: AuditEventType;
  /** Inclusive. */
  from?: Date;
  /** Exclusive. */
  to?: Date;
}

export interface AuditQuery extends AuditFilter {
  limit: number;
  /** The previous page's nextCursor; absent or null for the first page. */
  cursor?: string | null;
}

export interface AuditPage {
  items: AuditEventEntity[];
  nextCursor: string | null;
}

// Keys that must never reach the log, whoever builds the metadata (defence in depth).
const FORBIDDEN_METADATA_KEY = /pass|token|secret|hash|authorization/i;

/** The rows the two appends insert: $1-$7 the events' own fields, $8 their time, $9-$12 their chain fields. */
export const INSERT_EVENTS = `
    INSERT INTO audit_events
      (id, type, user_id, session_id, ip_address, user_agent, metadata, created_at, chain_key, chain_pos, prev_hash, hash)
    SELECT id, type, user_id, session_id, ip, ua, metadata::jsonb, $8::timestamptz, chain_key, chain_pos, prev_hash, hash
      FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                  $9::text[], $10::bigint[], $11::text[], $12::text[])
           WITH ORDINALITY AS v(id, type, user_id, session_id, ip, ua, metadata, chain_key, chain_pos, prev_hash, hash, n)`;

/** The events and the new heads (locked by LOCK_HEADS) in one statement (a data-modifying CTE always runs). */
const APPEND = `
  WITH appended AS (${INSERT_EVENTS} ORDER BY n)
  UPDATE audit_chain_heads h SET position = v.position, hash = v.hash, last_event_at = $8::timestamptz
    FROM unnest($13::text[], $14::bigint[], $15::text[]) AS v(chain_key, position, hash)
   WHERE h.chain_key = v.chain_key`;

/**
 * One chain's events in one statement, without locking its head first: the head moves only if
 * it is still the one this instance wrote last ($16, $17; in READ COMMITTED an UPDATE that
 * waited for another writer checks its condition again on the row that writer left), and the
 * events are inserted only if it moved; the statement's row count says which. Otherwise it
 * changed nothing and locked nothing, and the ordinary append follows. Kept to these two parts:
 * a third that locked and returned the moved head in the same statement cost PostgreSQL about
 * 25 µs more on every append (the common case) to save a round trip in the rare one.
 */
export const APPEND_IF_HEAD = `
  WITH moved AS (
    UPDATE audit_chain_heads SET position = $14, hash = $15, last_event_at = $8::timestamptz
     WHERE chain_key = $13 AND position = $16 AND hash = $17
    RETURNING chain_key
  ) ${INSERT_EVENTS} WHERE EXISTS (SELECT 1 FROM moved) ORDER BY n`;

/** How far past the database's clock a head's time is taken without a look at its event (instances' clock estimates differ by less). */
const HEAD_TIME_AHEAD_TOLERANCE_MICROS = 60_000_000;

/** Chains whose heads an instance remembers (about 200 bytes each). */
const KNOWN_HEADS_MAX = 10_000;

/** An event ready to be linked: what the chain hashes, but for its place and time. */
type EventRow = Omit<ChainedEvent, 'createdAt' | 'position' | 'type'> & { type: AuditEventType };

type LinkedEvent = ChainedEvent & { prevHash: string; hash: string };

const KNOWN_TYPES: ReadonlySet<string> = new Set(AUDIT_EVENT_TYPES);

@Injectable()
export class AuditService {
  private readonly logger = new Logger(AuditService.name);
  private readonly key: string;
  /** Events this instance appended since it started (the checkpoint job's trigger). */
  appended = 0;
  /** Called after events were appended; the checkpoint job listens. */
  onAppended: ((count: number) => void) | undefined;
  private readonly knownHeads = new ChainHeadCache(KNOWN_HEADS_MAX);
  /** Whether trying the one-statement append on a remembered head pays off on this instance. */
  private readonly headOdds = new RememberedHeadOdds();
  /** PostgreSQL's clock minus this process's, in ms, as last seen by a head lock. */
  private clockOffsetMs = 0;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    config: ConfigService<AppConfig, true>,
    private readonly domainEvents: DomainEventPublisher,
  ) {
    this.key = config.get('AUDIT_HMAC_KEY', { infer: true });
  }

  /** Appends the events, each to its user's chain (or the global one), in the caller's transaction. */
  async record(em: EntityManager, ...events: AuditEventInput[]): Promise<void> {
    await this.append(em, events, (e) => chainKeyOf(e.userId));
  }

  /**
   * Appends the events to one shared chain (see cleanupChainKey), whichever users they name: a
   * batch of many users' events then moves one head instead of one per user.
   */
  async recordInSharedChain(em: EntityManager, chainKey: string, events: AuditEventInput[]): Promise<void> {
    if (!isSharedChain(chainKey)) throw new Error(`${chainKey} is not a shared audit chain`);
    await this.append(em, events, () => chainKey);
  }

  private async append(em: EntityManager, events: AuditEventInput[], chainOf: (e: AuditEventInput) => string): Promise<void> {
    if (!events.length) return;
    // The head's row lock must hold until the events commit (outside a transaction it ends with
    // the statement, and two appends could take one position), and the events must go where
    // the rest of the chain is: a host passing its own data source's manager would write there.
    if (!em.queryRunner?.isTransactionActive || em.dataSource !== this.dataSource) {
      throw new Error("AuditService: record audit events inside a transaction of Sessionary's data source (dataSource.transaction(em => ...))");
    }
    // A type the log does not know (a host's, from JavaScript or a cast) would be chained and
    // then refused by every reader of the list's type filter and the OpenAPI enum.
    const unknownType = events.find((e) => !KNOWN_TYPES.has(e.type));
    if (unknownType) throw new Error(`AuditService: ${String(unknownType.type)} is not an audit event type (AUDIT_EVENT_TYPES)`);
    const metadata = events.map((e) => safeMetadata(e.metadata ?? {}));
    const rows: EventRow[] = events.map((e, i) => {
      // Hashed exactly as PostgreSQL stores them: a host's own ids and client context come here
      // as it wrote them, and a uuid in another accepted spelling (braces, no hyphens), a user
      // agent past 512 units or one ending in spaces past it (which varchar(512) cuts silently)
      // was stored otherwise than hashed, so the intact event read as altered (until 0.24.1).
      const userId = e.userId === null ? null : canonicalUuid(e.userId, 'userId');
      const client = boundedClientContext(e.client?.ipAddress, e.client?.userAgent);
      return {
        id: auditEventId(),
        type: e.type,
        userId,
        sessionId: e.sessionId ? canonicalUuid(e.sessionId, 'sessionId') : null,
        ipAddress: client.ipAddress,
        userAgent: client.userAgent,
        metadata: canonicalJson(metadata[i]),
        chainKey: chainOf({ ...e, userId }),
      };
    });
    const keys = [...new Set(rows.map((r) => r.chainKey))].sort();
    const known = keys.length === 1 ? this.knownHeads.get(keys[0]) : undefined;
    let chained: LinkedEvent[] | undefined;
    // A shared chain's remembered head is nearly always current (one instance cleans up at a
    // time, and it wrote the lane's last batch), whatever the odds of users' heads, which its
    // appends therefore neither follow nor feed: a tick's 200 hits would have the instance try
    // users' remembered heads behind a round-robin balancer, and miss, for the next twenty or more
    // (by the average's arithmetic: 1/32 a step from nearly 1 down to a half).
    const shared = known !== undefined && isSharedChain(keys[0]);
    const tried = known !== undefined && (shared || this.headOdds.worthTrying());
    if (tried) {
      // The common case (one user's events, on the instance that wrote that user's last one):
      // one round trip instead of two. The time is chosen here, so it cannot be the
      // database's clock after the lock: it is this instance's estimate of that clock, and
      // never before the chain's newest event, so each chain's times still rise.
      const atMicros = Math.max(Math.round((performance.timeOrigin + performance.now() + this.clockOffsetMs) * 1000), known.atMicros + 1);
      chained = this.link(rows, timeOfMicros(atMicros), new Map([[keys[0], known]]));
      const tip = chained[chained.length - 1];
      const { count: inserted } = await sql(
        em,
        APPEND_IF_HEAD,
        [...this.eventParams(chained), keys[0], tip.position, tip.hash, known.position, known.hash],
        { prepareAs: 'sessionary_audit_append_if_head' },
      );
      if (!shared) this.headOdds.observe(inserted === chained.length);
      if (inserted === chained.length) {
        this.knownHeads.set(keys[0], { position: tip.position, hash: tip.hash, atMicros });
      } else {
        // Moved by another instance (or gone): nothing was written; the ordinary append locks it.
        chained = undefined;
      }
    }
    if (!chained) {
      const heads = await lockHeads(em, keys, 'sessionary_audit_lock_heads');
      // Not tried: would the try have found the remembered head current? (So the odds keep learning.)
      if (known && !tried) this.headOdds.observe(Number(heads[0].position) === known.position && heads[0].hash === known.hash);
      // The clock once every head is locked (the last row's clock_timestamp), not the
      // transaction's start, and after each chain's newest event: so each chain's times rise
      // with its positions, and a month's partition holds a whole stretch of every chain
      // (retention drops months; see AuditPartitionsService).
      let atMicros = 0;
      for (const h of heads) {
        const now = microsOfTime(h.now);
        this.clockOffsetMs = now / 1000 - (performance.timeOrigin + performance.now());
        const last = await this.lastEventMicros(em, h, now);
        atMicros = Math.max(atMicros, now, last === null ? 0 : last + 1);
      }
      const tips = new Map(heads.map((h) => [h.chain_key, { position: Number(h.position), hash: h.hash }]));
      chained = this.link(rows, timeOfMicros(atMicros), tips);
      await sql(em, APPEND, [...this.eventParams(chained), keys, keys.map((k) => tips.get(k)!.position), keys.map((k) => tips.get(k)!.hash)], {
        prepareAs: 'sessionary_audit_append',
      });
      for (const k of keys) this.knownHeads.set(k, { ...tips.get(k)!, atMicros });
    }
    // The host's listeners hear of it once the caller's transaction commits.
    this.domainEvents.publish(
      em,
      chained.flatMap((e, i) => domainEventOf({ ...e, type: events[i].type, metadata: metadata[i] }) ?? []),
    );
    this.appended += chained.length;
    this.onAppended?.(chained.length);
  }

  /**
   * When the chain's newest event happened, as its head says, which the next event must follow.
   * A head time more than a minute past the database's clock is checked against the event at the
   * head's position, whose time is under its HMAC: the heads' table has no trigger and no MAC,
   * so someone who can write to it but holds no key could set a chain's time days ahead, and the
   * service signed every later event of that chain with that time (until 0.25.0), out of the
   * time ranges an investigator reads. An instance whose clock ran ahead writes such an event
   * itself (then the two agree, and the time is kept: each chain's times must rise, see the
   * locking append); a head that disagrees was altered, and the event's own time is taken.
   */
  private async lastEventMicros(em: EntityManager, head: ChainHeadRow, nowMicros: number): Promise<number | null> {
    if (head.last_event_at === null) return null;
    const said = microsOfTime(head.last_event_at);
    if (said <= nowMicros + HEAD_TIME_AHEAD_TOLERANCE_MICROS || head.position === '0') return said;
    const {
      rows: [tip],
    } = await sql<{ at: string }>(
      em,
      `SELECT to_char(created_at AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS at FROM audit_events WHERE chain_key = $1 AND chain_pos = $2`,
      [head.chain_key, head.position],
    );
    if (tip && microsOfTime(tip.at) === said) return said;
    this.logger.error(
      `Audit chain ${head.chain_key}: its head dates its newest event ${head.last_event_at}, after the database's clock (${head.now}), ` +
        `but the event at its position ${head.position} is dated ${tip?.at ?? 'nowhere (no such event)'}: the head was altered. ` +
        `The event's own time is used; run the audit verification`,
    );
    return tip ? microsOfTime(tip.at) : null;
  }

  /** Links the events, in order, after the given heads; `tips` ends up holding the new heads. */
  private link(rows: EventRow[], createdAt: string, tips: Map<string, { position: number; hash: string }>): LinkedEvent[] {
    return rows.map((r) => {
      const head = tips.get(r.chainKey)!;
      const event: ChainedEvent = { ...r, createdAt, position: head.position + 1 };
      const hash = eventHash(this.key, head.hash, event);
      tips.set(r.chainKey, { position: event.position, hash });
      return { ...event, prevHash: head.hash, hash };
    });
  }

  /** $1-$12 of INSERT_EVENTS. */
  private eventParams(chained: LinkedEvent[]): unknown[] {
    return [
      chained.map((e) => e.id),
      chained.map((e) => e.type),
      chained.map((e) => e.userId),
      chained.map((e) => e.sessionId),
      chained.map((e) => e.ipAddress),
      chained.map((e) => e.userAgent),
      chained.map((e) => e.metadata),
      chained[0].createdAt,
      chained.map((e) => e.chainKey),
      chained.map((e) => e.position),
      chained.map((e) => e.prevHash),
      chained.map((e) => e.hash),
    ];
  }

  /**
   * Newest first, keyset-paginated. By created_at and seq for a user's events and for a time
   * filter: the (user_id, created_at, seq, type), (created_at, seq) and (type, created_at, seq)
   * indexes give that order within each month (a user's page of one type tests the type on the
   * first index's entries), and created_at is the partition key, so PostgreSQL reads the months
   * newest first and stops once the page is full (in seq order a user's page merged every
   * month's index, reading in each; a time filter walked `seq` backwards past every newer
   * event: seconds at 10M events). By `seq` (the insertion order) otherwise: no filter, or a
   * type alone. The two orders differ only between events written within the same instants by
   * concurrent transactions.
   */
  async list(query: AuditQuery): Promise<AuditPage> {
    const byTime = Boolean(query.userId) || query.from !== undefined || query.to !== undefined;
    // A type without a user is pinned to the (type, …) indexes: `= ANY` of the one type keeps
    // `type` in the sort key, which only they provide. With `type = $1` the planner may walk
    // the seq or time index from the newest row instead, discarding other types' rows: 1 s at
    // 50M events once a cleanup had written 1.2M newer SESSION_EXPIRED events, statistics fresh
    // or not (13 ms pinned).
    const pinType = query.type !== undefined && !query.userId;
    const params: unknown[] = [];
    const param = (value: unknown): string => `$${params.push(value)}`;
    const where: string[] = [];
    if (query.userId) where.push(`e.user_id = ${param(query.userId)}`);
    // A user's type is written into the text, not passed: a generic plan cannot match a
    // parameter against the predicate of the index of a user's events by type (every type but
    // the two frequent ones: migration AuditUserTypeIndex), and without it a rare type's page
    // read every entry of a heavy user. So one prepared statement per type and shape (up to 16 × 8,
    // each prepared on a connection only once used).
    if (query.type) where.push(pinType ? `e.type = ANY(ARRAY[${param(query.type)}]::text[])` : `e.type = ${typeLiteral(query.type)}`);
    if (query.from) where.push(`e.created_at >= ${param(query.from)}`);
    if (query.to) where.push(`e.created_at < ${param(query.to)}`);
    // An empty `cursor=` is a cursor too, and not one we issued: a 400 (it read the first page
    // again, and a client building `cursor=${next ?? ''}` looped). A library caller's null
    // (the last page's nextCursor) is no cursor, as undefined is.
    if (query.cursor != null) {
      const cursor = decodeCursor(query.cursor);
      const micros = byTime && cursor.micros === null ? await this.microsOf(cursor.seq) : cursor.micros;
      if (byTime && micros !== null) {
        // A row comparison on the index's own columns: the scan starts right after the cursor.
        // The bound on created_at alone, implied by it, lets PostgreSQL skip the newer months
        // (a row comparison does not prune partitions), which a deep page would probe each.
        const at = `timestamptz 'epoch' + ${param(micros)}::bigint * interval '1 microsecond'`;
        where.push(`(e.created_at, e.seq) < (${at}, ${param(cursor.seq)}::bigint)`, `e.created_at <= ${at}`);
      } else {
        where.push(`e.seq < ${param(cursor.seq)}`);
      }
    }
    const text = `SELECT ${AUDIT_EVENT_COLUMNS},
              -- The exact instant (a Date keeps milliseconds only) for the next cursor.
              (extract(epoch FROM e.created_at) * 1000000)::bigint::text AS cursor_micros
         FROM audit_events e
        ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
        ORDER BY ${byTime ? `${pinType ? 'e.type DESC, ' : ''}e.created_at DESC, e.seq DESC` : `${pinType ? 'e.type, ' : ''}e.seq DESC`}
        LIMIT ${param(query.limit + 1)}`;
    // A user's pages are prepared (every value is a parameter, so a filter's shape fixes the
    // text): planning looks at every monthly partition's indexes (1.0–1.3 ms at 15 months,
    // 3.6–3.9 ms at 50, measured), and the months accumulate (nothing is dropped by default).
    // After its first calls PostgreSQL keeps a generic plan for them, the user's indexes in time
    // order (the plans test checks it), in which the months a time bound excludes are pruned as
    // it starts. Not the pages without a user: their generic plans estimate `LIMIT $n` at a
    // tenth of the table, so PostgreSQL keeps planning each call anyway (forced, the generic
    // plan of the unfiltered page sorted the whole table: 25 s at 50M events).
    const { rows } = await sql<AuditEventRow>(this.dataSource.manager, text, params, query.userId ? { prepareAs: listStatementName(text) } : {});
    const items = rows.slice(0, query.limit).map(toAuditEvent);
    const last = rows.length > query.limit ? rows[query.limit - 1] : undefined;
    return { items, nextCursor: last ? encodeCursor(last.seq, last.cursor_micros) : null };
  }

  /** created_at, in µs since the epoch, of the event an `a1` cursor (seq alone) names; null once it is gone (its month dropped). */
  private async microsOf(seq: string): Promise<string | null> {
    const {
      rows: [row],
    } = await sql<{ micros: string }>(
      this.dataSource.manager,
      `SELECT (extract(epoch FROM created_at) * 1000000)::bigint::text AS micros FROM audit_events WHERE seq = $1`,
      [seq],
    );
    return row?.micros ?? null;
  }
}

/** An event type as an SQL literal: only one of AUDIT_EVENT_TYPES (capitals and underscores), never the caller's text. */
function typeLiteral(type: AuditEventType): string {
  if (!(AUDIT_EVENT_TYPES as readonly string[]).includes(type)) throw new BadRequestException(`Unknown audit event type`);
  return `'${type}'`;
}

/** The prepared statement's name for a page query's text: the same on every connection, distinct per text (at most 136 with a user: 8 shapes of time bounds and cursor, each with or without one of 16 types). */
function listStatementName(text: string): string {
  return `sessionary_audit_list_${createHash('sha256').update(text).digest('hex').slice(0, 20)}`;
}

/** The columns of an event as the pages show it (seq as text: a bigint may exceed a JS number). */
const AUDIT_EVENT_COLUMNS = `e.id, e.seq::text AS seq, e.type, e.user_id, e.session_id, e.ip_address, e.user_agent, e.metadata, e.created_at`;

interface AuditEventRow {
  id: string;
  seq: string;
  type: AuditEventType;
  user_id: string | null;
  session_id: string | null;
  ip_address: string | null;
  user_agent: string | null;
  metadata: AuditMetadata;
  created_at: Date;
  cursor_micros: string;
}

function toAuditEvent(row: AuditEventRow): AuditEventEntity {
  return {
    id: row.id,
    seq: row.seq,
    type: row.type,
    userId: row.user_id,
    sessionId: row.session_id,
    ipAddress: row.ip_address,
    userAgent: row.user_agent,
    metadata: row.metadata,
    createdAt: row.created_at,
  };
}

function safeMetadata(metadata: AuditMetadata): AuditMetadata {
  for (const key of Object.keys(metadata)) {
    if (FORBIDDEN_METADATA_KEY.test(key)) throw new Error(`Audit metadata key "${key}" is not allowed`);
  }
  // A lone surrogate in a key or a string value: PostgreSQL's jsonb refuses its escape (a failed
  // write), so the string is made well-formed first, as the columns' strings are.
  if (!Object.entries(metadata).some(([key, value]) => !key.isWellFormed() || (typeof value === 'string' && !value.isWellFormed()))) return metadata;
  return Object.fromEntries(
    Object.entries(metadata).map(([key, value]) => [key.toWellFormed(), typeof value === 'string' ? value.toWellFormed() : value]),
  );
}

/**
 * A uuid as PostgreSQL writes it back (lower case, hyphens 8-4-4-4-12), from any spelling its
 * input accepts; anything else is the caller's error, thrown before a row is written.
 */
export function canonicalUuid(value: string, field: string): string {
  const digits = value
    .trim()
    .replace(/^\{(.*)\}$/s, '$1')
    .replace(/-/g, '')
    .toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(digits)) throw new Error(`AuditService: ${field} is not a uuid`);
  return `${digits.slice(0, 8)}-${digits.slice(8, 12)}-${digits.slice(12, 16)}-${digits.slice(16, 20)}-${digits.slice(20)}`;
}
