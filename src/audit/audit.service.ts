import { BadRequestException, Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import { DataSource, EntityManager } from 'typeorm';
import type { ClientContext } from '../common/client-context';
import type { AppConfig } from '../config/config';
import { DomainEventPublisher } from '../events/domain-event-publisher';
import { domainEventOf } from '../events/domain-events';
import { canonicalJson, chainKeyOf, ChainedEvent, ChainHeadRow, eventHash, GENESIS_HASH, LOCK_HEADS } from './audit-chain';
import { AuditEventEntity, AuditEventType, AuditMetadata } from './audit-event.entity';

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
  cursor?: string;
}

export interface AuditPage {
  items: AuditEventEntity[];
  nextCursor: string | null;
}

// Keys that must never reach the log, whoever builds the metadata (defence in depth).
const FORBIDDEN_METADATA_KEY = /pass|token|secret|hash|authorization/i;

/** The events and the new heads in one statement (a data-modifying CTE always runs). */
const APPEND = `
  WITH appended AS (
    INSERT INTO audit_events
      (id, type, user_id, session_id, ip_address, user_agent, metadata, created_at, chain_key, chain_pos, prev_hash, hash)
    SELECT id, type, user_id, session_id, ip, ua, metadata::jsonb, $8::timestamptz, chain_key, chain_pos, prev_hash, hash
      FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                  $9::text[], $10::bigint[], $11::text[], $12::text[])
           WITH ORDINALITY AS v(id, type, user_id, session_id, ip, ua, metadata, chain_key, chain_pos, prev_hash, hash, n)
     ORDER BY n)
  UPDATE audit_chain_heads h SET position = v.position, hash = v.hash
    FROM unnest($13::text[], $14::bigint[], $15::text[]) AS v(chain_key, position, hash)
   WHERE h.chain_key = v.chain_key`;

/**
 * The only writer of audit events. It takes the caller's EntityManager so that an event
 * commits in the same transaction as the change it records, or not at all. Every event is
 * appended to its user's hash chain (ASVS 16.4.2): two statements per call, whatever the
 * number of events and chains.
 */
@Injectable()
export class AuditService {
  private readonly key: string;
  /** Events this instance appended since it started (the checkpoint job's trigger). */
  appended = 0;
  /** Called after events were appended; the checkpoint job listens. */
  onAppended: ((count: number) => void) | undefined;

  constructor(
    @InjectDataSource() private readonly dataSource: DataSource,
    config: ConfigService<AppConfig, true>,
    private readonly domainEvents: DomainEventPublisher,
  ) {
    this.key = config.get('AUDIT_HMAC_KEY', { infer: true });
  }

  async record(em: EntityManager, ...events: AuditEventInput[]): Promise<void> {
    if (!events.length) return;
    const metadata = events.map((e) => safeMetadata(e.metadata ?? {}));
    const rows = events.map((e, i) => ({
      id: randomUUID(),
      type: e.type,
      userId: e.userId === null ? null : e.userId.toLowerCase(),
      sessionId: e.sessionId ? e.sessionId.toLowerCase() : null,
      ipAddress: e.client?.ipAddress ?? null,
      userAgent: e.client?.userAgent ?? null,
      metadata: canonicalJson(metadata[i]),
      chainKey: chainKeyOf(e.userId),
    }));
    const keys = [...new Set(rows.map((r) => r.chainKey))].sort();
    const heads: ChainHeadRow[] = await em.query(LOCK_HEADS, [keys, GENESIS_HASH]);
    // The clock once every head is locked (the last row's clock_timestamp), not the
    // transaction's start: so each chain's times rise with its positions, and a month's
    // partition holds a whole stretch of every chain (retention drops months; see
    // AuditPartitionsService). The strings have one fixed format: they sort as times do.
    const createdAt = heads.reduce((latest, h) => (h.now > latest ? h.now : latest), heads[0].now);
    const tip = new Map(heads.map((h) => [h.chain_key, { position: Number(h.position), hash: h.hash }]));
    const chained = rows.map((r) => {
      const head = tip.get(r.chainKey)!;
      const event: ChainedEvent = { ...r, createdAt, position: head.position + 1 };
      const prevHash = head.hash;
      const hash = eventHash(this.key, prevHash, event);
      tip.set(r.chainKey, { position: event.position, hash });
      return { ...event, prevHash, hash };
    });
    await em.query(APPEND, [
      chained.map((e) => e.id),
      chained.map((e) => e.type),
      chained.map((e) => e.userId),
      chained.map((e) => e.sessionId),
      chained.map((e) => e.ipAddress),
      chained.map((e) => e.userAgent),
      chained.map((e) => e.metadata),
      createdAt,
      chained.map((e) => e.chainKey),
      chained.map((e) => e.position),
      chained.map((e) => e.prevHash),
      chained.map((e) => e.hash),
      keys,
      keys.map((k) => tip.get(k)!.position),
      keys.map((k) => tip.get(k)!.hash),
    ]);
    // The host's listeners hear of it once the caller's transaction commits.
    this.domainEvents.publish(
      em,
      chained.flatMap((e, i) => domainEventOf({ ...e, type: events[i].type, metadata: metadata[i] }) ?? []),
    );
    this.appended += chained.length;
    this.onAppended?.(chained.length);
  }

  /** Newest first, keyset-paginated on the monotonic `seq`. */
  async list(query: AuditQuery): Promise<AuditPage> {
    const qb = this.dataSource.getRepository(AuditEventEntity).createQueryBuilder('e');
    if (query.userId) qb.andWhere('e.user_id = :userId', { userId: query.userId });
    if (query.type) qb.andWhere('e.type = :type', { type: query.type });
    if (query.from) qb.andWhere('e.created_at >= :from', { from: query.from });
    if (query.to) qb.andWhere('e.created_at < :to', { to: query.to });
    if (query.cursor) qb.andWhere('e.seq < :seq', { seq: decodeCursor(query.cursor) });
    const rows = await qb
      .orderBy('e.seq', 'DESC')
      .limit(query.limit + 1)
      .getMany();
    const items = rows.slice(0, query.limit);
    const nextCursor = rows.length > query.limit ? encodeCursor(items[items.length - 1].seq) : null;
    return { items, nextCursor };
  }
}

function safeMetadata(metadata: AuditMetadata): AuditMetadata {
  for (const key of Object.keys(metadata)) {
    if (FORBIDDEN_METADATA_KEY.test(key)) throw new Error(`Audit metadata key "${key}" is not allowed`);
  }
  return metadata;
}

const CURSOR_PREFIX = 'a1.';
/** What a cursor looks like (base64url of `a1.<seq>`); the OpenAPI document states it. */
export const AUDIT_CURSOR_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

export function encodeCursor(seq: string): string {
  return Buffer.from(`${CURSOR_PREFIX}${seq}`, 'utf8').toString('base64url');
}

/** An opaque cursor; anything that is not one we issued is a 400. */
export function decodeCursor(cursor: string): string {
  const decoded = AUDIT_CURSOR_PATTERN.test(cursor) ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  const match = /^a1\.([1-9][0-9]{0,18})$/.exec(decoded);
  if (!match || BigInt(match[1]) > 9223372036854775807n) throw new BadRequestException(['cursor is invalid']);
  return match[1];
}
