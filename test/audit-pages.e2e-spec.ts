import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { ConfigService } from '@nestjs/config';
import type { Response } from 'supertest';
import type { DataSource } from 'typeorm';
import { type AuditQuery, AuditService } from '../src/audit/audit.service';
import { DomainEventPublisher } from '../src/events/domain-event-publisher';
import { bearer, login, registerAndLogin, registerUser, type Tokens } from './helpers/factories';
import { createTestApp, freshDatabase, TestApp } from './helpers/test-app';
import { tamper } from './helpers/db';

/**
 * The audit list's pages for every filter combination, checked against the events as seeded:
 * every page in order, no event twice or missing, across a month's partition boundary. Time
 * filters and a user's events page by (created_at, seq), the others by seq (AuditService.list): the
 * seeded times are deliberately not in seq order, so each test sees which order was used.
 */
interface Seeded {
  id: string;
  seq: number;
  type: string;
  userId: string | null;
  at: number;
}

const TYPES = ['LOGIN', 'TOKEN_REFRESH', 'LOGOUT'] as const;

describe('audit pages by filter (e2e)', () => {
  let t: TestApp;
  let admin: Tokens;
  let userA: { id: string; tokens: Tokens };
  let userB: string;
  let events: Seeded[];
  /** The first instant of next month (UTC): a partition boundary the migration created. */
  let boundary: number;

  before(async () => {
    t = await createTestApp();
    const a = await registerAndLogin(t.http);
    const adminUser = await registerUser(t.http);
    await t.db.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [adminUser.id]);
    admin = await login(t.http, adminUser);
    userB = (await registerUser(t.http)).id;
    const now = new Date();
    boundary = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1);
    // Only these events count: the ones registration and login wrote are older than the range.
    await tamper(t.db, `DELETE FROM audit_events`);
    userA = { id: a.user.id, tokens: a.tokens };
    // 60 events from 30 minutes before the boundary to 30 after, a minute apart, with the odd
    // pairs swapped in time (so seq order and time order differ) and a few at the same instant
    // as another (i = 4, 14, ...: the minute of i - 2).
    const rows = Array.from({ length: 60 }, (_, i) => {
      const minute = i % 10 === 4 ? i - 1 : i % 2 === 1 ? i - 1 : i + 1;
      return {
        id: randomUUID(),
        type: TYPES[i % 3],
        userId: i % 5 === 0 ? null : i % 2 ? userA.id : userB,
        at: boundary + (minute - 30) * 60_000,
      };
    });
    // Then, last in seq, events of each user at times among their earlier ones (half a minute
    // past a whole one): one user's events are not in seq order by time either.
    for (let k = 0; k < 4; k++) {
      for (const userId of [userA.id, userB]) {
        rows.push({ id: randomUUID(), type: TYPES[k % 3], userId, at: boundary + (k * 15 - 25) * 60_000 + 30_000 + (userId === userB ? 60_000 : 0) });
      }
    }
    const inserted: Array<{ id: string; seq: string }> = await t.db.query(
      `INSERT INTO audit_events (id, type, user_id, created_at)
       SELECT id, type, user_id, at FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[]) WITH ORDINALITY AS v(id, type, user_id, at, n)
        ORDER BY n RETURNING id, seq::text AS seq`,
      [rows.map((r) => r.id), rows.map((r) => r.type), rows.map((r) => r.userId), rows.map((r) => new Date(r.at))],
    );
    const seqOf = new Map(inserted.map((r) => [r.id, Number(r.seq)]));
    events = rows.map((r) => ({ ...r, seq: seqOf.get(r.id)! }));
    // Equal instants: the seq tie-break decides.
    assert.ok(events.some((e, i) => events.findIndex((o) => o.at === e.at) !== i));
    // For each user, time order and seq order differ.
    for (const userId of [userA.id, userB]) {
      const own = events.filter((e) => e.userId === userId);
      const bySeq = [...own].sort((x, y) => x.seq - y.seq).map((e) => e.id);
      const byTime = [...own].sort((x, y) => x.at - y.at || x.seq - y.seq).map((e) => e.id);
      assert.notDeepEqual(byTime, bySeq);
    }
  });
  after(async () => {
    await t?.close();
  });

  type Filter = { userId?: string; type?: string; from?: number; to?: number };

  /** What the list promises: the filtered events, newest first in the order the filters choose. */
  function expected(f: Filter): string[] {
    const byTime = f.userId !== undefined || f.from !== undefined || f.to !== undefined;
    return events
      .filter((e) => (!f.userId || e.userId === f.userId) && (!f.type || e.type === f.type))
      .filter((e) => (f.from === undefined || e.at >= f.from) && (f.to === undefined || e.at < f.to))
      .sort((x, y) => (byTime ? y.at - x.at || y.seq - x.seq : y.seq - x.seq))
      .map((e) => e.id);
  }

  async function allPages(path: string, tokens: Tokens, f: Filter, limit: number): Promise<string[]> {
    const params = new URLSearchParams({ limit: String(limit) });
    if (f.userId && path.includes('admin')) params.set('userId', f.userId);
    if (f.type) params.set('type', f.type);
    if (f.from !== undefined) params.set('from', new Date(f.from).toISOString());
    if (f.to !== undefined) params.set('to', new Date(f.to).toISOString());
    const seen: string[] = [];
    let cursor: string | null = null;
    for (let page = 0; page < 100; page++) {
      const res: Response = await t.http.get(`${path}?${params}${cursor ? `&cursor=${cursor}` : ''}`).set('Authorization', bearer(tokens));
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.ok(res.body.items.length <= limit);
      seen.push(...res.body.items.map((e: { id: string }) => e.id));
      cursor = res.body.nextCursor;
      if (!cursor) return seen;
    }
    throw new Error('more than 100 pages');
  }

  const minutes = (m: number) => m * 60_000;
  const filters = (): Array<[string, Filter]> => [
    ['no filter', {}],
    ['type', { type: 'LOGIN' }],
    ['userId', { userId: userA.id }],
    ['from (before the boundary)', { from: boundary - minutes(10) }],
    ['to (after the boundary)', { to: boundary + minutes(10) }],
    ['from+to across the boundary', { from: boundary - minutes(20), to: boundary + minutes(20) }],
    ['type+from', { type: 'TOKEN_REFRESH', from: boundary - minutes(25) }],
    ['type+to', { type: 'LOGIN', to: boundary + minutes(5) }],
    ['type+from+to', { type: 'LOGOUT', from: boundary - minutes(15), to: boundary + minutes(15) }],
    ['userId+type', { userId: userB, type: 'LOGIN' }],
    ['userId+from+to', { userId: userA.id, from: boundary - minutes(20), to: boundary + minutes(20) }],
    ['userId+type+from+to', { userId: userB, type: 'TOKEN_REFRESH', from: boundary - minutes(29), to: boundary + minutes(29) }],
    ['an empty range', { from: boundary + minutes(40), to: boundary + minutes(50) }],
  ];

  it('the admin list pages through every filter combination in order, each event once, across the month boundary', async () => {
    for (const [name, f] of filters()) {
      const want = expected(f);
      for (const limit of [1, 7, 100]) {
        assert.deepEqual(await allPages('/api/v1/admin/audit', admin, f, limit), want, `${name}, limit ${limit}`);
      }
      if (name.includes('boundary')) {
        const months = new Set(want.map((id) => events.find((e) => e.id === id)!.at >= boundary));
        assert.equal(months.size, 2, `${name} spans both months`);
      }
    }
  });

  it("a user's own list pages the same way, by time, with any time filter", async () => {
    for (const [name, f] of filters().filter(([, f]) => f.userId === userA.id || !f.userId)) {
      const own = { ...f, userId: userA.id };
      assert.deepEqual(await allPages('/api/v1/audit', userA.tokens, own, 3), expected(own), name);
    }
  });

  it('continues from a cursor of the previous version (seq alone) under a time filter', async () => {
    const f: Filter = { from: boundary - minutes(20), to: boundary + minutes(20) };
    const want = expected(f);
    const seqOf = (id: string) => events.find((e) => e.id === id)!.seq;
    const legacy = Buffer.from(`a1.${seqOf(want[4])}`, 'utf8').toString('base64url');
    const params = new URLSearchParams({ from: new Date(f.from!).toISOString(), to: new Date(f.to!).toISOString(), limit: '100', cursor: legacy });
    const res = await t.http.get(`/api/v1/admin/audit?${params}`).set('Authorization', bearer(admin));
    assert.equal(res.status, 200);
    assert.deepEqual(
      res.body.items.map((e: { id: string }) => e.id),
      want.slice(5),
    );
  });

  it('answers 400 for a malformed new-style cursor', async () => {
    for (const raw of ['a2.5', 'a2.5.01', 'a2.0.5', 'a2.5.1.2']) {
      const cursor = Buffer.from(raw, 'utf8').toString('base64url');
      const res = await t.http.get(`/api/v1/admin/audit?to=2030-01-01T00:00:00Z&cursor=${cursor}`).set('Authorization', bearer(admin));
      assert.equal(res.status, 400, raw);
      assert.deepEqual(res.body.message, ['cursor is invalid']);
    }
  });
});

describe("the audit list's plans (e2e)", () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ DATABASE_URL: await freshDatabase() });
  });
  after(async () => {
    await t?.close();
  });

  /** The one statement list() sends for a query, captured instead of run. */
  const statementOf = async (query: AuditQuery): Promise<{ name?: string; text: string; params: unknown[] }> => {
    const captured: Array<{ name?: string; text: string; params: unknown[] }> = [];
    const capturing = {
      manager: {
        queryRunner: {
          query: async (statement: string | { name: string; text: string }, params: unknown[]) => {
            captured.push(typeof statement === 'string' ? { text: statement, params } : { ...statement, params });
            return { records: [] };
          },
        },
      },
    } as unknown as DataSource;
    await new AuditService(capturing, t.app.get(ConfigService), t.app.get(DomainEventPublisher)).list(query);
    assert.equal(captured.length, 1);
    return captured[0];
  };
  /**
   * The plans of the statement list() sends for a query, explained
   * on the database as PostgreSQL plans it for the first calls (with the values) and, when it
   * is prepared, also as the generic plan it settles on after them (values unknown to the
   * planner; the months a time bound excludes are pruned when the plan starts).
   */
  const plansOf = async (query: AuditQuery): Promise<{ prepared: boolean; plans: string[] }> => {
    const { name, text, params } = await statementOf(query);
    const [row] = await t.db.query(`EXPLAIN (FORMAT JSON) ${text}`, params);
    const custom = JSON.stringify(row['QUERY PLAN']);
    if (name === undefined) return { prepared: false, plans: [custom] };
    assert.match(name, /^sessionary_audit_list_[0-9a-f]{20}$/);
    const runner = t.db.createQueryRunner();
    try {
      await runner.query(`SET plan_cache_mode = force_generic_plan`);
      await runner.query(`PREPARE page_plan AS ${text}`);
      const literal = (value: unknown) => `'${(value instanceof Date ? value.toISOString() : String(value)).replaceAll("'", "''")}'`;
      const [generic] = await runner.query(`EXPLAIN (FORMAT JSON) EXECUTE page_plan(${params.map(literal).join(', ')})`);
      // A generic plan names the parameters where a custom one has the values.
      assert.match(JSON.stringify(generic['QUERY PLAN']), /\$1\b/);
      await runner.query(`DEALLOCATE page_plan`);
      await runner.query(`RESET plan_cache_mode`);
      return { prepared: true, plans: [custom, JSON.stringify(generic['QUERY PLAN'])] };
    } finally {
      await runner.release();
    }
  };
  /** The partitions' copies of these partitioned indexes. */
  const childrenOf = async (...indexes: string[]): Promise<string[]> =>
    (
      await t.db.query(`SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = ANY($1::regclass[])`, [
        indexes.map((name) => `"${name}"`),
      ])
    ).map((r: { relname: string }) => r.relname);

  it('stops at the months that fill the page: an ordered Append, not a Merge Append of every month', async () => {
    // Three months of events for 100 users (300 each, half logins, half refreshes), straight into the table.
    const now = new Date();
    const start = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 2, 1);
    const months = [0, 1, 2].map((m) => new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 2 + m, 1)));
    for (const from of months) {
      const to = new Date(Date.UTC(from.getUTCFullYear(), from.getUTCMonth() + 1, 1));
      const name = `audit_events_y${from.getUTCFullYear()}m${String(from.getUTCMonth() + 1).padStart(2, '0')}`;
      await t.db.query(
        `CREATE TABLE IF NOT EXISTS "${name}" PARTITION OF audit_events FOR VALUES FROM ('${from.toISOString()}') TO ('${to.toISOString()}')`,
      );
    }
    const users: string[] = Array.from({ length: 100 }, () => randomUUID());
    await t.db.query(
      `INSERT INTO audit_events (type, user_id, created_at)
       SELECT CASE WHEN g / 100 % 2 = 0 THEN 'LOGIN' ELSE 'TOKEN_REFRESH' END, ($1::uuid[])[1 + g % 100], $2::timestamptz + (g * interval '5 minutes')
         FROM generate_series(0, 29999) g WHERE $2::timestamptz + (g * interval '5 minutes') < now()`,
      [users, new Date(start)],
    );
    await t.db.query('ANALYZE audit_events');

    // A user's index of every type, and that of the user's events by type but the two frequent ones.
    const everyType = await childrenOf('IDX_audit_events_user_time_type');
    const byType = await childrenOf('IDX_audit_events_user_type_partial');
    for (const [query, children] of [
      [{ userId: users[7], limit: 20 }, everyType],
      [{ userId: users[7], type: 'LOGIN' as const, limit: 20 }, byType],
      [{ userId: users[7], type: 'TOKEN_REFRESH' as const, limit: 20 }, everyType],
      [{ userId: users[7], from: new Date(start + 10 * 86_400_000), to: new Date(now.getTime() - 86_400_000), limit: 20 }, everyType],
    ] satisfies Array<[AuditQuery, string[]]>) {
      const { prepared, plans } = await plansOf(query);
      assert.ok(prepared, "a user's page is a prepared statement");
      for (const plan of plans) {
        assert.ok(!plan.includes('"Merge Append"') && !plan.includes('"Sort"'), plan);
        assert.ok(plan.includes('"Node Type":"Append"'), plan);
        assert.ok(
          children.some((name) => plan.includes(`"Index Name":"${name}"`)),
          plan,
        );
        // The type is tested on the index's entries, so that only the events of that type are
        // fetched from the table (a Filter would fetch every event of the user first).
        if (query.type) {
          assert.match(plan, /"Index Cond":"[^"]*\(type\)::text = /, plan);
          assert.doesNotMatch(plan, /"Filter":"[^"]*type/, plan);
        }
      }
    }
  });

  it("reads a user's page of a rare type without reading the user's thousands of refreshes", async () => {
    // 20,000 refreshes of one user over the last days, and three password changes among the first.
    const user = randomUUID();
    const since = Date.now() - 3 * 86_400_000;
    await t.db.query(
      `INSERT INTO audit_events (type, user_id, created_at)
       SELECT CASE WHEN g IN (10, 20, 30) THEN 'PASSWORD_CHANGED' ELSE 'TOKEN_REFRESH' END, $1, $2::timestamptz + g * interval '10 seconds'
         FROM generate_series(0, 19999) g`,
      [user, new Date(since)],
    );
    await t.db.query('ANALYZE audit_events');
    const { text, params } = await statementOf({ userId: user, type: 'PASSWORD_CHANGED', limit: 20 });
    // As the service runs it after its first calls: the generic plan, values unknown to the planner.
    const runner = t.db.createQueryRunner();
    try {
      await runner.query(`SET plan_cache_mode = force_generic_plan`);
      await runner.query(`PREPARE rare_page AS ${text}`);
      const [explained] = await runner.query(
        `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE rare_page(${params.map((v) => `'${String(v)}'`).join(', ')})`,
      );
      const top = explained['QUERY PLAN'][0].Plan;
      assert.equal(top['Actual Rows'], 3);
      // The user's index of every type reads all 20,000 entries here (about 120 pages).
      const pages = top['Shared Hit Blocks'] + top['Shared Read Blocks'];
      assert.ok(pages < 40, `read ${pages} pages: ${JSON.stringify(explained['QUERY PLAN'])}`);
      await runner.query(`DEALLOCATE rare_page`);
    } finally {
      await runner.query(`RESET plan_cache_mode`);
      await runner.release();
    }
  });

  it("reads an admin's type filter through the (type, …) indexes, also when newer events of other types come first in seq and time", async () => {
    // A cleanup's burst: many newer events of another type. With `type = $1` the planner may walk
    // the seq (or time) index from the newest row, discarding them (1 s at 50M events).
    const now = Date.now();
    await t.db.query(
      `INSERT INTO audit_events (type, created_at)
       SELECT CASE WHEN g < 2000 THEN 'LOGIN_FAILED' ELSE 'SESSION_EXPIRED' END,
              $1::timestamptz + (g * interval '1 second')
         FROM generate_series(0, 19999) g`,
      [new Date(now - 6 * 3600_000)],
    );
    await t.db.query('ANALYZE audit_events');
    const typeIndexes = await childrenOf('IDX_audit_events_type_seq', 'IDX_audit_events_type_created_at_seq');
    const otherIndexes = await childrenOf('IDX_audit_events_seq', 'IDX_audit_events_created_at_seq');
    assert.ok(typeIndexes.length >= 3 && otherIndexes.length >= 3);
    for (const query of [
      { type: 'LOGIN_FAILED' as const, limit: 20 },
      { type: 'LOGIN_FAILED' as const, from: new Date(now - 24 * 3600_000), limit: 20 },
    ]) {
      const { prepared, plans } = await plansOf(query);
      // Planned at each call: a generic plan would not know the limit (see AuditService.list).
      assert.ok(!prepared, 'a page without a user is not prepared');
      for (const plan of plans) {
        const used = (names: string[]) => names.filter((name) => plan.includes(`"Index Name":"${name}"`));
        assert.ok(used(typeIndexes).length > 0, plan);
        assert.deepEqual(used(otherIndexes), [], plan);
      }
    }
  });
});
