import { BadRequestException, Injectable } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { DataSource, EntityManager } from 'typeorm';
import type { ClientContext } from '../common/client-context';
import { AuditEventEntity, AuditEventType, AuditMetadata } from './audit-event.entity';

export interface AuditEventInput {
  type: AuditEventType;
  userId: string | null;
  sessionId?: string | null;
  client?: ClientContext | null;
  metadata?: AuditMetadata;
}

export interface AuditQuery {
  userId?: string;
  type?: AuditEventType;
  from?: Date;
  to?: Date;
  limit: number;
  cursor?: string;
}

export interface AuditPage {
  items: AuditEventEntity[];
  nextCursor: string | null;
}

// Keys that must never reach the log, whoever builds the metadata (defence in depth).
const FORBIDDEN_METADATA_KEY = /pass|token|secret|hash|authorization/i;

/**
 * The only writer of audit events. It takes the caller's EntityManager so that an event
 * commits in the same transaction as the change it records, or not at all.
 */
@Injectable()
export class AuditService {
  constructor(@InjectDataSource() private readonly dataSource: DataSource) {}

  async record(em: EntityManager, ...events: AuditEventInput[]): Promise<void> {
    if (!events.length) return;
    await em.insert(
      AuditEventEntity,
      events.map((e) => ({
        type: e.type,
        userId: e.userId,
        sessionId: e.sessionId ?? null,
        ipAddress: e.client?.ipAddress ?? null,
        userAgent: e.client?.userAgent ?? null,
        metadata: safeMetadata(e.metadata ?? {}),
      })),
    );
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

export function encodeCursor(seq: string): string {
  return Buffer.from(`${CURSOR_PREFIX}${seq}`, 'utf8').toString('base64url');
}

/** An opaque cursor; anything that is not one we issued is a 400. */
export function decodeCursor(cursor: string): string {
  const decoded = /^[A-Za-z0-9_-]{1,64}$/.test(cursor) ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  const match = /^a1\.([1-9][0-9]{0,18})$/.exec(decoded);
  if (!match || BigInt(match[1]) > 9223372036854775807n) throw new BadRequestException(['cursor is invalid']);
  return match[1];
}
