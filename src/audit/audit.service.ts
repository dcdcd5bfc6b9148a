import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import { DataSource, EntityManager } from 'typeorm';
import type { ClientContext } from '../common/client-context';
import type { AppConfig } from '../config/config';
import { DomainEventPublisher } from '../events/domain-event-publisher';
import { domainEventOf } from '../events/domain-events';
import { canonicalJson, chainKeyOf, ChainedEvent, ChainHeadRow, eventHash, GENESIS_HASH, LOCK_HEADS } from './audit-chain';
import { decodeCursor, encodeCursor } from './audit-cursor';
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

  /**
   * Newest first, keyset-paginated. By `seq` (the insertion order), except for a time filter
   * without a user: then by created_at and seq, so that the (created_at, seq) and
   * (type, created_at, seq) indexes find the first page within the range directly, instead of
   * walking `seq` backwards past every newer event (seconds at 10M events). A user's events
   * are few enough that their (user_id, seq) indexes serve every filter. The two orders differ
   * only between events written within the same instants by concurrent transactions.
   */
  async list(query: AuditQuery): Promise<AuditPage> {
    const byTime = !query.userId && (query.from !== undefined || query.to !== undefined);
    const qb = this.dataSource.getRepository(AuditEventEntity).createQueryBuilder('e');
    if (query.userId) qb.andWhere('e.user_id = :userId', { userId: query.userId });
    if (query.type) qb.andWhere('e.type = :type', { type: query.type });
    if (query.from) qb.andWhere('e.created_at >= :from', { from: query.from });
    if (query.to) qb.andWhere('e.created_at < :to', { to: query.to });
    if (query.cursor) {
      const cursor = decodeCursor(query.cursor);
      const micros = byTime && cursor.micros === null ? await this.microsOf(cursor.seq) : cursor.micros;
      if (byTime && micros !== null) {
        // A row comparison on the index's own columns: the scan starts right after the cursor.
        qb.andWhere(`(e.created_at, e.seq) < (timestamptz 'epoch' + :micros::bigint * interval '1 microsecond', :seq::bigint)`, {
          micros,
          seq: cursor.seq,
        });
      } else {
        qb.andWhere('e.seq < :seq', { seq: cursor.seq });
      }
    }
    if (byTime) qb.orderBy('e.created_at', 'DESC').addOrderBy('e.seq', 'DESC');
    else qb.orderBy('e.seq', 'DESC');
    // The exact instant (a Date keeps milliseconds only) for the next cursor.
    qb.addSelect('(extract(epoch FROM e.created_at) * 1000000)::bigint::text', 'cursor_micros').limit(query.limit + 1);
    const { entities, raw } = await qb.getRawAndEntities<{ cursor_micros: string }>();
    const items = entities.slice(0, query.limit);
    const last = items.length ? raw[items.length - 1] : undefined;
    const nextCursor = entities.length > query.limit && last ? encodeCursor(items[items.length - 1].seq, last.cursor_micros) : null;
    return { items, nextCursor };
  }

  /** created_at, in µs since the epoch, of the event an `a1` cursor (seq alone) names; null once it is gone (its month dropped). */
  private async microsOf(seq: string): Promise<string | null> {
    const [row] = await this.dataSource.query(
      `SELECT (extract(epoch FROM created_at) * 1000000)::bigint::text AS micros FROM audit_events WHERE seq = $1`,
      [seq],
    );
    return row?.micros ?? null;
  }
}

function safeMetadata(metadata: AuditMetadata): AuditMetadata {
  for (const key of Object.keys(metadata)) {
    if (FORBIDDEN_METADATA_KEY.test(key)) throw new Error(`Audit metadata key "${key}" is not allowed`);
  }
  return metadata;
}
