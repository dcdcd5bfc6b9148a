import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigService } from '@nestjs/config';
import { DataSource } from 'typeorm';
import { AuditBaseSets } from '../src/audit/audit-base-sets';
import { AuditChainService } from '../src/audit/audit-chain.service';
import { AuditExportService } from '../src/audit/audit-export.service';
import { AuditMonthOrder, CHAIN_ORDER_COMMENT } from '../src/audit/audit-month-order';
import { AuditShipDestinations } from '../src/audit/audit-ship-destinations';
import { AuditPartitionsService, partitionOf } from '../src/audit/audit-partitions.service';
import { AuditPartitionsTask } from '../src/audit/audit-partitions.task';
import { AuditVerifierService } from '../src/audit/audit-verifier.service';
import { AuditService } from '../src/audit/audit.service';
import { monthStart, pastEvents, silentUser, uncommittedPastEvent } from './helpers/audit-months';
import { createTestApp, freshDatabase, TestApp } from './helpers/test-app';
import { SESSIONARY_DATA_SOURCE_TOKEN } from '../src/database/data-source-name';

const opened: TestApp[] = [];

afterEach(async () => {
  for (const t of opened.splice(0)) await t.close();
});

async function app(overrides: Record<string, string> = {}): Promise<TestApp> {
  const t = await createTestApp({ DATABASE_URL: await freshDatabase(), ...overrides });
  opened.push(t);
  // The boot's own maintenance run, out of the tests' way (theirs would find its lock taken).
  await t.app.get(AuditPartitionsTask).handleTick();
  return t;
}

/** A partitions service of its own (stopWaiting ends its runs for good). */
function partitionsService(t: TestApp): AuditPartitionsService {
  return new AuditPartitionsService(
    t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN),
    t.app.get(AuditChainService),
    t.app.get(AuditExportService),
    t.app.get(AuditBaseSets),
    t.app.get(AuditMonthOrder),
    t.app.get(AuditShipDestinations),
    t.app.get(ConfigService),
  );
}

/**
 * Three users and the global chain, their events taking turns over two past months (so that in
 * time order no two events of a chain lie side by side): the two months' partitions.
 */
async function interleavedMonths(t: TestApp): Promise<{ users: string[]; months: string[] }> {
  const users = [await silentUser(t.db, 'ann'), await silentUser(t.db, 'bob'), await silentUser(t.db, 'cid')];
  const turns = (n: number) => Array.from({ length: n }, (_, i) => ({ userId: i % 4 === 3 ? null : users[i % 4], type: i % 2 ? 'LOGIN' : 'LOGOUT' }));
  await pastEvents(t, monthStart(3), turns(24));
  await pastEvents(t, monthStart(2), turns(16));
  return { users, months: [partitionOf(monthStart(2)).name, partitionOf(monthStart(3)).name] };
}

/** The month's events as they lie in its table. */
async function tableOrder(db: DataSource, table: string): Promise<string[]> {
  const rows: Array<{ at: string }> = await db.query(`SELECT chain_key || ':' || chain_pos AS at FROM "${table}" ORDER BY ctid`);
  return rows.map((r) => r.at);
}

/** The same events in chain order (chain key, then position). */
function inChainOrder(order: string[]): string[] {
  return [...order].sort((a, b) => {
    const [ka, pa] = a.split(':');
    const [kb, pb] = b.split(':');
    return ka !== kb ? (ka < kb ? -1 : 1) : Number(pa) - Number(pb);
  });
}

/** Every column of every event of the table, by id. */
async function eventsOf(db: DataSource, table: string): Promise<unknown[]> {
  return db.query(`SELECT * FROM "${table}" ORDER BY id`);
}

/** What makes the table a month of audit_events: its bound, indexes, triggers, constraints and comment. */
async function shapeOf(db: DataSource, table: string): Promise<unknown> {
  const [part] = await db.query(
    `SELECT c.relispartition AS partition, pg_get_expr(c.relpartbound, c.oid) AS bound, obj_description(c.oid, 'pg_class') AS comment
       FROM pg_class c WHERE c.oid = $1::regclass`,
    [`"${table}"`],
  );
  const indexes = await db.query(
    `SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def, p.inhparent::regclass::text AS parent
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid LEFT JOIN pg_inherits p ON p.inhrelid = i.indexrelid
      WHERE i.indrelid = $1::regclass ORDER BY 1`,
    [`"${table}"`],
  );
  const triggers = await db.query(`SELECT tgname AS name FROM pg_trigger WHERE tgrelid = $1::regclass ORDER BY 1`, [`"${table}"`]);
  const checks = await db.query(`SELECT conname AS name FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'c' ORDER BY 1`, [
    `"${table}"`,
  ]);
  return { ...part, indexes, triggers, checks };
}

async function eventCount(db: DataSource): Promise<number> {
  return (await db.query(`SELECT count(*)::int AS n FROM audit_events`))[0].n;
}

/** Tables a rewrite works with besides the month's own. */
async function leftovers(db: DataSource): Promise<string[]> {
  const rows: Array<{ name: string }> = await db.query(
    `SELECT relname AS name FROM pg_class WHERE relname LIKE 'audit\\_events\\_y%\\_ordered' OR relname LIKE 'audit\\_events\\_y%\\_retired'`,
  );
  return rows.map((r) => r.name);
}

/** Waits until another connection waits for a lock (the rewrite's swap, here). */
async function untilSomeoneWaitsForALock(db: DataSource): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const [{ waiting }] = await db.query(
      `SELECT count(*)::int AS waiting FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
    );
    if (waiting > 0) return;
    await sleep(10);
  }
  assert.fail('no connection came to wait for a lock');
}

describe('closed audit months rewritten in chain order (e2e)', () => {
  it('rewrites each closed month in chain order: the same events, indexes, trigger and bound; the log verifies and pages read the same', async () => {
    const t = await app();
    const { users, months } = await interleavedMonths(t);
    const current = partitionOf(monthStart(0)).name;
    const before = new Map<string, { order: string[]; events: unknown[]; shape: unknown }>();
    for (const table of [...months, current]) {
      before.set(table, { order: await tableOrder(t.db, table), events: await eventsOf(t.db, table), shape: await shapeOf(t.db, table) });
    }
    for (const table of months) assert.notDeepEqual(before.get(table)!.order, inChainOrder(before.get(table)!.order), 'seeded in time order');
    const audit = t.app.get(AuditService);
    const pagesBefore = await Promise.all(users.map((userId) => audit.list({ userId, limit: 50 })));

    // One month a run, newest first.
    const partitions = t.app.get(AuditPartitionsService);
    const runs = [await partitions.maintain()];
    assert.match((await t.http.get('/metrics')).text, /^sessionary_audit_closed_months_in_time_order 1$/m);
    runs.push(await partitions.maintain());

    assert.deepEqual(
      runs.map((r) => r.ordered.map((o) => [o.name, o.events])),
      [[[months[0], 16]], [[months[1], 24]]],
    );
    assert.deepEqual(
      runs.map((r) => r.orderHeld),
      [[], []],
    );
    assert.match((await t.http.get('/metrics')).text, /^sessionary_audit_closed_months_in_time_order 0$/m);
    for (const table of months) {
      const { order, events, shape } = before.get(table)!;
      assert.deepEqual(await tableOrder(t.db, table), inChainOrder(order));
      assert.deepEqual(await eventsOf(t.db, table), events);
      assert.deepEqual(await shapeOf(t.db, table), { ...(shape as object), comment: CHAIN_ORDER_COMMENT });
    }
    // The current month is still written to: left as it is.
    assert.deepEqual(await shapeOf(t.db, current), before.get(current)!.shape);
    assert.deepEqual(await leftovers(t.db), []);
    // The append-only triggers came with the new table (the row one by ATTACH, TRUNCATE's made for it).
    await assert.rejects(t.db.query(`UPDATE "${months[1]}" SET type = 'LOGIN'`), /append-only/);
    await assert.rejects(t.db.query(`TRUNCATE "${months[1]}"`), /append-only: TRUNCATE refused/);
    const verification = await t.app.get(AuditVerifierService).verify();
    assert.deepEqual(
      { ok: verification.ok, reason: verification.reason, checked: verification.checked },
      { ok: true, reason: null, checked: await eventCount(t.db) },
    );
    assert.deepEqual(await Promise.all(users.map((userId) => audit.list({ userId, limit: 50 }))), pagesBefore);

    const again = await partitions.maintain();
    assert.deepEqual({ ordered: again.ordered, orderHeld: again.orderHeld }, { ordered: [], orderHeld: [] });
  });

  it("waits for a verification's snapshot, which sees every event of the month (audit_events locked before the snapshot)", async () => {
    const t = await app();
    const { months } = await interleavedMonths(t);
    const bases = t.app.get(AuditBaseSets);
    const partitions = t.app.get(AuditPartitionsService);
    // The verification's first read takes its snapshot; the rewrite comes right after it.
    const inForce = bases.inForce.bind(bases);
    let during: Awaited<ReturnType<AuditPartitionsService['maintain']>> | undefined;
    bases.inForce = async (...args: Parameters<AuditBaseSets['inForce']>) => {
      const set = await inForce(...args);
      bases.inForce = inForce;
      during = await partitions.maintain();
      return set;
    };

    const verification = await t.app.get(AuditVerifierService).verify();

    assert.deepEqual(
      { ok: verification.ok, reason: verification.reason, checked: verification.checked },
      { ok: true, reason: null, checked: await eventCount(t.db) },
    );
    assert.deepEqual(during?.ordered, []);
    assert.equal(during?.orderHeld[0]?.name, months[0]);
    assert.match(during!.orderHeld[0].reason, /not granted within 1000 ms/);
    // Once the verification is over, the next run rewrites it.
    assert.deepEqual(
      (await partitions.maintain()).ordered.map((o) => o.name),
      [months[0]],
    );
  });

  it('locks audit_events before the month for the swap, as readers do: a reader holding the log goes on reading the month', async () => {
    const t = await app();
    const { months } = await interleavedMonths(t);
    // This test acts while the swap waits: time enough for it on a loaded machine.
    t.app.get(AuditMonthOrder).lockTimeoutMs = 30_000;
    const reader = t.db.createQueryRunner();
    await reader.connect();
    await reader.startTransaction();
    try {
      await reader.query(`LOCK TABLE ONLY audit_events IN ACCESS SHARE MODE`);
      const running = t.app.get(AuditPartitionsService).maintain();
      await untilSomeoneWaitsForALock(t.db);
      // With the month locked first for the swap, this read would wait for the swap and the
      // swap for this transaction's lock on audit_events: a deadlock, one of them aborted.
      const [{ n }] = await reader.query(`SELECT count(*)::int AS n FROM "${months[0]}"`);
      assert.equal(n, 16);
      await reader.commitTransaction();
      const result = await running;
      assert.deepEqual({ ordered: result.ordered.map((o) => o.name), orderHeld: result.orderHeld }, { ordered: [months[0]], orderHeld: [] });
    } finally {
      if (reader.isTransactionActive) await reader.rollbackTransaction();
      await reader.release();
    }
  });

  it('copies the month again when an event entered it during the copy, and waits for a writer still open', async () => {
    const t = await app();
    const { users, months } = await interleavedMonths(t);
    const partitions = t.app.get(AuditPartitionsService);

    // A writer still open when the swap wants the month: the lock is not granted in time.
    const open = await uncommittedPastEvent(t, monthStart(2), users[0]);
    try {
      const held = await partitions.maintain();
      assert.deepEqual(held.ordered, []);
      assert.equal(held.orderHeld[0]?.name, months[0]);
      assert.match(held.orderHeld[0].reason, /not granted within 1000 ms/);

      // One that commits while the swap waits for it: its event is not in the copy.
      t.app.get(AuditMonthOrder).lockTimeoutMs = 30_000;
      const running = partitions.maintain();
      await untilSomeoneWaitsForALock(t.db);
      await open.commitTransaction();
      const changed = await running;
      assert.deepEqual(changed.ordered, []);
      assert.deepEqual(changed.orderHeld, [
        { name: months[0], reason: 'events were written into it while it was copied; the next run copies it again' },
      ]);
    } finally {
      if (open.isTransactionActive) await open.rollbackTransaction();
      await open.release();
    }
    assert.deepEqual(await leftovers(t.db), []);

    const done = await partitions.maintain();
    assert.deepEqual(
      done.ordered.map((o) => [o.name, o.events]),
      [[months[0], 17]],
    );
  });

  it('leaves a month holding events not yet sealed into their chains', async () => {
    const t = await app();
    const { months } = await interleavedMonths(t);
    await t.db.query(`INSERT INTO audit_events (type, user_id, created_at) VALUES ('LOGIN', NULL, $1)`, [
      new Date(monthStart(2).getTime() + 86_400_000),
    ]);

    const result = await t.app.get(AuditPartitionsService).maintain();

    assert.deepEqual(result.ordered, []);
    assert.deepEqual(result.orderHeld, [{ name: months[0], reason: 'it holds events not yet sealed into their chains' }]);
  });

  it('cancels a rewrite under way at shutdown (stopWaiting), and the next run does it', async () => {
    const t = await app();
    const { months } = await interleavedMonths(t);
    const stopping = partitionsService(t);
    // Someone holds the month so that the copy waits, with no timeout, until it is cancelled.
    const holder = t.db.createQueryRunner();
    await holder.connect();
    await holder.startTransaction();
    await holder.query(`LOCK TABLE "${months[0]}" IN ACCESS EXCLUSIVE MODE`);
    let result;
    try {
      const running = stopping.maintain();
      await untilSomeoneWaitsForALock(t.db);
      stopping.stopWaiting();
      // Without the cancel the copy would wait for the holder, which waits for it.
      result = await Promise.race([running, sleep(10_000).then(() => assert.fail('the rewrite went on waiting after stopWaiting'))]);
    } finally {
      await holder.rollbackTransaction();
      await holder.release();
    }
    assert.deepEqual(result.ordered, []);
    assert.deepEqual(result.orderHeld, [{ name: months[0], reason: 'the service is stopping' }]);
    assert.deepEqual(await leftovers(t.db), []);
    assert.equal((await t.db.query(`SELECT obj_description($1::regclass, 'pg_class') AS c`, [`"${months[0]}"`]))[0].c, null);

    assert.deepEqual(
      (await t.app.get(AuditPartitionsService).maintain()).ordered.map((o) => o.name),
      [months[0]],
    );
  });

  it('drops the old table a rewrite left when its process stopped before dropping it, with no month left to rewrite', async () => {
    const t = await app();
    const leftover = `${partitionOf(monthStart(9)).name}_retired`;
    await t.db.query(`CREATE TABLE "${leftover}" (LIKE audit_events)`);

    await t.app.get(AuditPartitionsService).maintain();

    assert.deepEqual(await leftovers(t.db), []);
  });

  it('leaves every month in time order with AUDIT_ORDER_CLOSED_MONTHS=false', async () => {
    const t = await app({ AUDIT_ORDER_CLOSED_MONTHS: 'false' });
    const { months } = await interleavedMonths(t);
    const order = await tableOrder(t.db, months[1]);

    const result = await t.app.get(AuditPartitionsService).maintain();

    assert.deepEqual({ ordered: result.ordered, orderHeld: result.orderHeld }, { ordered: [], orderHeld: [] });
    assert.deepEqual(await tableOrder(t.db, months[1]), order);
    assert.match((await t.http.get('/metrics')).text, /^sessionary_audit_closed_months_in_time_order 2$/m);
  });
});
