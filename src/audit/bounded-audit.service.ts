import { Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { LRUCache } from 'lru-cache';
import { DataSource } from 'typeorm';
import type { AppConfig } from '../config/config';
import { sql } from '../database/sql';
import type { AuditEventType, AuditMetadata } from './audit-event.entity';
import type { ClientContext } from '../common/client-context';
import { AuditEventInput, AuditService } from './audit.service';

/**
 * The event types recorded through this service. The partial index IDX_audit_events_bounded
 * (migration 1765800000000) covers exactly these: a type added here needs a migration that
 * widens it, or the window's query reads every recent event of the type.
 */
export const BOUNDED_EVENT_TYPES = ['ACCESS_DENIED', 'REFRESH_FAILED'] as const satisfies readonly AuditEventType[];
export type BoundedEventType = (typeof BOUNDED_EVENT_TYPES)[number];
/** The index's predicate, repeated in the query so that the planner can use it with any plan. */
const BOUNDED_TYPES_SQL = `(${BOUNDED_EVENT_TYPES.map((t) => `'${t}'`).join(', ')})`;

/**
 * How long the key ($1 session, $2 type, optionally $4 route and $5 method) stays inside its
 * window of $3 seconds: null when no such event was written in it. Exported for the plan test.
 */
export const BOUNDED_WINDOW_QUERY = `
  SELECT (extract(epoch FROM max(created_at) + make_interval(secs => $3) - now()) * 1000)::float8 AS remaining_ms
    FROM audit_events
   WHERE session_id = $1 AND type = $2 AND type IN ${BOUNDED_TYPES_SQL} AND created_at > now() - make_interval(secs => $3)
     AND ($4::text IS NULL OR (metadata->>'route' = $4::text AND metadata->>'method' = $5::text))`;

/** Keys this instance knows are inside their window (no query until the window is over). */
const REMEMBERED_KEYS = 10_000;

export interface AuditBoundKey {
  sessionId: string;
  /** Narrows the key within the session (e.g. `GET /api/v1/admin/audit`); matched on metadata.route and metadata.method. */
  route?: RefusedRoute;
}

/** A refused request's route: its template (never the raw URL, which holds ids) and method. */
export interface RefusedRoute {
  template: string;
  method: string;
}

/**
 * Records events that a caller can trigger as often as they like (a refused request, a
 * replayed refresh token) without letting one caller write unbounded rows: at most one event
 * of a type per key (a session, optionally a route of it) in AUDIT_REFUSAL_WINDOW seconds,
 * across every instance. The audit log itself is the state: under a transaction-scoped
 * advisory lock on the key, an event is written only when none of that type and key was
 * written in the window (the partial index IDX_audit_events_bounded finds it). Each instance
 * also remembers, in a bounded LRU, keys it knows are inside their window, so repeated
 * refusals cost no query.
 * What is not written is counted (`suppressed`, exposed in /metrics).
 */
@Injectable()
export class BoundedAuditService {
  private readonly logger = new Logger(BoundedAuditService.name);
  private readonly inWindowUntil = new LRUCache<string, number>({ max: REMEMBERED_KEYS });
  private readonly counts = new Map<AuditEventType, { recorded: number; suppressed: number }>();
  private readonly windowSeconds: number;

  constructor(
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly audit: AuditService,
    config: ConfigService<AppConfig, true>,
  ) {
    this.windowSeconds = config.get('AUDIT_REFUSAL_WINDOW', { infer: true });
  }

  /** Per event type: recorded by this instance, and left out because the key was inside its window. */
  stats(): Array<{ type: AuditEventType; recorded: number; suppressed: number }> {
    return [...this.counts].map(([type, c]) => ({ type, ...c }));
  }

  /**
   * ACCESS_DENIED for a user refused on a route (the roles guard, an attempt on a session not
   * theirs), at most once per session and route in the window: its metadata names the route as
   * the window's query reads it, beside `details`. Never throws: the refusal's answer stands
   * whether or not it could be recorded, and a failure to record is logged for the operator.
   */
  async recordAccessDenied(refusal: {
    userId: string;
    sessionId: string;
    client: ClientContext;
    route: RefusedRoute;
    details: AuditMetadata;
  }): Promise<void> {
    const { userId, sessionId, client, route, details } = refusal;
    try {
      await this.record(
        { type: 'ACCESS_DENIED', userId, sessionId, client, metadata: { route: route.template, method: route.method, ...details } },
        { sessionId, route },
      );
    } catch (error) {
      this.logger.error('Recording ACCESS_DENIED failed', error instanceof Error ? error.stack : String(error));
    }
  }

  /** Writes the event in its own transaction unless its key is inside its window; true when written. */
  async record(
    event: AuditEventInput & { type: BoundedEventType; sessionId: string },
    key: AuditBoundKey = { sessionId: event.sessionId },
  ): Promise<boolean> {
    const id = `${event.type}|${key.sessionId}|${key.route ? `${key.route.method} ${key.route.template}` : ''}`;
    const until = this.inWindowUntil.get(id);
    if (until !== undefined && until > performance.now()) return this.count(event.type, false);

    const remainingMs = await this.dataSource.transaction(async (em) => {
      // Concurrent attempts on one key (on any instance) take turns: only the first writes.
      await sql(em, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [`audit-bound|${id}`]);
      const { rows } = await sql<{ remaining_ms: number }>(em, BOUNDED_WINDOW_QUERY, [
        key.sessionId,
        event.type,
        this.windowSeconds,
        key.route?.template ?? null,
        key.route?.method ?? null,
      ]);
      const remaining = rows[0]?.remaining_ms;
      if (remaining != null && remaining > 0) return remaining;
      await this.audit.record(em, event);
      return undefined;
    });
    // A relative deadline: this instance's clock and the database's need not agree.
    this.inWindowUntil.set(id, performance.now() + (remainingMs ?? this.windowSeconds * 1000));
    return this.count(event.type, remainingMs === undefined);
  }

  private count(type: AuditEventType, recorded: boolean): boolean {
    let c = this.counts.get(type);
    if (!c) this.counts.set(type, (c = { recorded: 0, suppressed: 0 }));
    if (recorded) c.recorded++;
    else c.suppressed++;
    return recorded;
  }
}
