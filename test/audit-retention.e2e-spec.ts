import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createWriteStream, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigService } from '@nestjs/config';
import { Client } from 'pg';
import { DataSource, DataSourceOptions } from 'typeorm';
import { checkpointMac, type Checkpoint } from '../src/audit/audit-chain';
import { AuditChainService } from '../src/audit/audit-chain.service';
import { verifyExportFile } from '../src/audit/audit-export-file-verifier';
import { AuditExportService } from '../src/audit/audit-export.service';
import { AuditBaseSets, legacyBaseMac } from '../src/audit/audit-base-sets';
import { AuditMonthOrder } from '../src/audit/audit-month-order';
import { AuditShipDestinations } from '../src/audit/audit-ship-destinations';
import { AuditPartitionsService, monthOf, partitionOf } from '../src/audit/audit-partitions.service';
import { AuditPartitionsTask } from '../src/audit/audit-partitions.task';
import { AuditVerifierService } from '../src/audit/audit-verifier.service';
import { lastEventOfPiece } from '../src/audit/shipped-piece-tail';
import { AuditShipTask } from '../src/audit/audit-ship.task';
import type { AppConfig } from '../src/config/config';
import { AuditService } from '../src/audit/audit.service';
import { dataSourceOptions, MIGRATIONS } from '../src/database/data-source.options';
import { AuditPartitions1765100000000 } from '../src/database/migrations/1765100000000-AuditPartitions';
import { runMigrationsLocked } from '../src/database/migrate';
import { registerUser } from './helpers/factories';
import { appsClosedAfterEachTest } from './helpers/test-scope';
import { createTestApp, freshDatabase, TEST_AUDIT_HMAC_KEY, TestApp } from './helpers/test-app';
import { tamper } from './helpers/db';
import { metric } from './helpers/service-process';
import { monthStart, partitionsOf, pastEvents, silentUser, uncommittedPastEvent } from './helpers/audit-months';
import { SESSIONARY_DATA_SOURCE_TOKEN } from '../src/database/data-source-name';

const { opened, scratch } = appsClosedAfterEachTest();

async function app(url: string, overrides: Record<string, string> = {}): Promise<TestApp> {
  const t = await createTestApp({ DATABASE_URL: url, ...overrides });
  opened.push(t);
  // The boot's own maintenance run, out of the tests' way (theirs would find its lock taken).
  await t.app.get(AuditPartitionsTask).handleTick();
  return t;
}

/** The app's partitions service with AUDIT_RETENTION_DAYS set to `days` (one app, several retentions). */
function retention(t: TestApp, days: number, dataSource: DataSource = t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN)): AuditPartitionsService {
  const config = t.app.get(ConfigService);
  return new AuditPartitionsService(
    dataSource,
    t.app.get(AuditChainService),
    t.app.get(AuditExportService),
    t.app.get(AuditBaseSets),
    t.app.get(AuditMonthOrder),
    t.app.get(AuditShipDestinations),
    {
      get: (name: string, options?: unknown) => (name === 'AUDIT_RETENTION_DAYS' ? days : config.get(name, options as never)),
    } as unknown as ConfigService<AppConfig, true>,
  );
}

/**
 * A fresh app whose log holds one event five months back, a second user with no events yet (for
 * an event written into that month late), and the AUDIT_RETENTION_DAYS that make the month due.
 */
async function oneOldMonth(name: string): Promise<{ t: TestApp; late: string; old: Date; days: number }> {
  const t = await app(await freshDatabase());
  const userId = await silentUser(t.db, name);
  const late = await silentUser(t.db, `${name}-late`);
  const old = monthStart(5);
  await pastEvents(t, old, [{ userId, type: 'LOGIN' }]);
  return { t, late, old, days: Math.floor((Date.now() - partitionOf(old).to.getTime()) / 86_400_000) };
}

async function assertVerifies(t: TestApp, dropped: number): Promise<void> {
  const verification = await t.app.get(AuditVerifierService).verify();
  assert.deepEqual({ ok: verification.ok, reason: verification.reason, dropped: verification.dropped }, { ok: true, reason: null, dropped });
}

async function preparedSet(t: TestApp, month: Date): Promise<{ events: number; settled: boolean }> {
  const [set] = await t.db.query(`SELECT events::int AS events, settled_seq IS NOT NULL AS settled FROM audit_base_sets WHERE month = $1`, [
    monthOf(partitionOf(month)),
  ]);
  return set;
}

describe('audit log partitions and retention (e2e)', () => {
  it('converts an existing log into monthly partitions, every row and the chain kept, and back', async () => {
    const url = await freshDatabase();
    const t = await app(url);
    await registerUser(t.http);
    const userId = await silentUser(t.db, 'converted');
    await pastEvents(t, monthStart(3), [
      { userId, type: 'LOGIN' },
      { userId: null, type: 'LOGIN_FAILED' },
    ]);
    const before: unknown[] = await t.db.query(
      `SELECT id, seq, type, user_id, created_at, chain_key, chain_pos, prev_hash, hash FROM audit_events ORDER BY seq`,
    );
    await t.close();
    opened.pop();

    // Back to one table and forward again: the conversion runs over rows of several months.
    const source = await new DataSource(dataSourceOptions(url)).initialize();
    try {
      // The later migrations first, then the conversion itself.
      const undo = MIGRATIONS.length - MIGRATIONS.indexOf(AuditPartitions1765100000000);
      for (let i = 0; i < undo; i++) await source.undoLastMigration({ transaction: 'each' });
      const [{ kind }] = await source.query(`SELECT relkind AS kind FROM pg_class WHERE relname = 'audit_events'`);
      assert.equal(kind, 'r', 'the down migration gives a plain table back');
      assert.deepEqual(
        await source.query(`SELECT id, seq, type, user_id, created_at, chain_key, chain_pos, prev_hash, hash FROM audit_events ORDER BY seq`),
        before,
      );
      await runMigrationsLocked(source);
    } finally {
      await source.destroy();
    }

    // The undone migrations included the signing keys': this boot makes a new ring, and records it.
    const again = await app(url);
    const maxBefore = Math.max(...before.map((r) => Number((r as { seq: string }).seq)));
    assert.deepEqual(
      await again.db.query(
        `SELECT id, seq, type, user_id, created_at, chain_key, chain_pos, prev_hash, hash FROM audit_events WHERE seq <= $1 ORDER BY seq`,
        [maxBefore],
      ),
      before,
    );
    assert.deepEqual(
      (await again.db.query(`SELECT type FROM audit_events WHERE seq > $1`, [maxBefore])).map((r: { type: string }) => r.type),
      ['KEY_ROTATED'],
    );
    const partitions = await partitionsOf(again.db);
    assert.equal(partitions[partitionOf(monthStart(3)).name], 2, 'the old month has its own partition');
    assert.equal(partitions[partitionOf(monthStart(0)).name], before.length - 2 + 1);
    // New events keep numbering after the copied ones, and the chain verifies.
    await registerUser(again.http);
    const [{ max }] = await again.db.query(`SELECT max(seq)::int AS max FROM audit_events`);
    assert.equal(max, maxBefore + 2);
    const verification = await again.app.get(AuditVerifierService).verify();
    assert.equal(verification.ok, true, verification.reason ?? '');
  });

  it('creates the coming months ahead of time, and again if one went missing', async () => {
    const t = await app(await freshDatabase());
    const partitions = t.app.get(AuditPartitionsService);
    await partitions.maintain();
    const names = (await partitions.list()).map((p) => p.name);
    for (const ahead of [0, -1, -2])
      assert.ok(names.includes(partitionOf(monthStart(ahead)).name), `${partitionOf(monthStart(ahead)).name} in ${names}`);
    await t.db.query(`DROP TABLE "${partitionOf(monthStart(-2)).name}"`);
    // A month without its TRUNCATE refusal, as one made by an instance of a version before it.
    await t.db.query(`DROP TRIGGER audit_no_truncate ON "${partitionOf(monthStart(-1)).name}"`);
    const result = await partitions.maintain();
    assert.deepEqual(result.created, [partitionOf(monthStart(-2)).name]);
    assert.deepEqual(result.dropped, []);
    // Each month refuses TRUNCATE, the one made again and the one that had lost it too.
    for (const { name } of await partitions.list()) await assert.rejects(t.db.query(`TRUNCATE "${name}"`), /append-only: TRUNCATE refused/, name);
  });

  it('leaves a month ahead to a later run rather than wait behind a long read, with every audited write queued behind it', async () => {
    const url = await freshDatabase();
    const t = await app(url);
    const partitions = t.app.get(AuditPartitionsService);
    await partitions.maintain();
    const ahead = partitionOf(monthStart(-2)).name;
    await t.db.query(`DROP TABLE "${ahead}"`);
    // An export's or a verification's snapshot, or pg_dump: a transaction reading audit_events holds its ACCESS SHARE lock to the end.
    const reader = new Client({ connectionString: url });
    await reader.connect();
    try {
      await reader.query('BEGIN');
      await reader.query('SELECT count(*) FROM audit_events');
      // It waited for the reader until the statement timeout (15 s) and failed, audited writes queued behind it all along.
      const result = await partitions.maintain();
      assert.deepEqual(result.created, []);
      assert.ok(!(await partitions.list()).some((p) => p.name === ahead));
    } finally {
      await reader.query('ROLLBACK');
      await reader.end();
    }
    assert.deepEqual((await partitions.maintain()).created, [ahead], 'the next run creates it');
  });

  it('drops a month past AUDIT_RETENTION_DAYS whole, archived first, and the rest still verifies', async () => {
    const archiveDir = mkdtempSync(join(tmpdir(), 'sessionary-archive-'));
    const checkpointFile = join(archiveDir, 'checkpoints.ndjson');
    scratch.push(archiveDir);
    const t = await app(await freshDatabase(), { AUDIT_RETENTION_DAYS: '30', AUDIT_ARCHIVE_DIR: archiveDir, AUDIT_CHECKPOINT_FILE: checkpointFile });
    const userId = await silentUser(t.db, 'retained');
    // Another user's chain, not the global one: the boot already appended KEY_ROTATED (the new
    // signing-key ring) to the global chain today, and a chain's times must rise with its positions.
    const otherUserId = await silentUser(t.db, 'retained-other');
    const old = monthStart(4);
    await pastEvents(t, old, [
      { userId, type: 'LOGIN' },
      { userId, type: 'LOGOUT' },
      { userId: otherUserId, type: 'LOGIN_FAILED' },
    ]);
    // The same chains go on today.
    await t.db.transaction((em) => t.app.get(AuditService).record(em, { type: 'LOGIN', userId }, { type: 'LOGIN_FAILED', userId: null }));
    await registerUser(t.http);
    const oldEvents: Array<{ id: string; hash: string }> = await t.db.query(`SELECT id, hash FROM audit_events WHERE created_at < $1 ORDER BY seq`, [
      partitionOf(old).to,
    ]);
    const remaining = (await t.db.query(`SELECT count(*)::int AS n FROM audit_events WHERE created_at >= $1`, [partitionOf(old).to]))[0].n;

    const maintainStarted = performance.now();
    const result = await t.app.get(AuditPartitionsService).maintain();
    const maintainMs = performance.now() - maintainStarted;
    assert.deepEqual(result.held, []);
    assert.deepEqual(
      result.dropped.map((d) => [d.name, d.events]),
      [[partitionOf(old).name, 3]],
    );
    // Where the drop's time went, as its log line reports it: parts of the run's own time.
    const [{ detachMs, removeMs }] = result.dropped;
    assert.ok(Number.isInteger(detachMs) && Number.isInteger(removeMs), JSON.stringify(result.dropped));
    assert.ok(detachMs >= 0 && removeMs >= 0 && detachMs + removeMs <= Math.ceil(maintainMs), JSON.stringify({ detachMs, removeMs, maintainMs }));
    assert.equal((await partitionsOf(t.db))[partitionOf(old).name], undefined, 'the month is gone');
    assert.equal(
      (await t.app.get(AuditPartitionsService).list()).some((p) => p.name === partitionOf(old).name),
      false,
    );

    // The archive: an export of the month (the events as they were stored, then the seal),
    // which verifies offline, and the checkpoint that closes it.
    const archiveFile = result.dropped[0].archive!;
    const archived = readFileSync(archiveFile, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      archived.filter((e) => !('seal' in e)).map((e) => [e.id, e.hash]),
      oldEvents.map((e) => [e.id, e.hash]),
    );
    const archiveCheck = await verifyExportFile(archiveFile, TEST_AUDIT_HMAC_KEY);
    assert.deepEqual({ ok: archiveCheck.ok, lines: archiveCheck.lines, reason: archiveCheck.reason }, { ok: true, lines: 3, reason: null });
    const closing = JSON.parse(readFileSync(result.dropped[0].archive!.replace(/\.ndjson$/, '.checkpoint.json'), 'utf8')) as Checkpoint;
    const { mac, ...fields } = closing;
    assert.equal(checkpointMac(TEST_AUDIT_HMAC_KEY, fields), mac);
    assert.ok(BigInt(closing.maxSeq) >= BigInt(Math.max(...archived.filter((e) => !('seal' in e)).map((e) => Number(e.seq)))));

    // The chains start at their bases now; the checkpoint file's counts include the dropped events.
    const verification = await t.app.get(AuditVerifierService).verify({ checkpointFile });
    assert.deepEqual(
      { ok: verification.ok, reason: verification.reason, checked: verification.checked, dropped: verification.dropped },
      { ok: true, reason: null, checked: remaining, dropped: 3 },
    );
    // A whole export now starts each chain at its base, and still verifies offline.
    const exported = join(archiveDir, 'after-retention.ndjson');
    await pipeline(await t.app.get(AuditExportService).open({}), createWriteStream(exported));
    const offline = await verifyExportFile(exported, TEST_AUDIT_HMAC_KEY);
    assert.deepEqual({ ok: offline.ok, lines: offline.lines, reason: offline.reason }, { ok: true, lines: remaining, reason: null });
    const metrics = await t.http.get('/metrics');
    assert.match(metrics.text, /^sessionary_audit_retention_dropped_events_total 3$/m);
    assert.match(metrics.text, /^sessionary_audit_retention_last_run_timestamp_seconds [1-9]/m);

    // The bases are keyed as a set: moving one, forging the set's count, or deleting the first
    // event after a base (and moving the base over it, so that the chain itself holds) is detected.
    const [base] = await t.db.query(`SELECT position::int AS pos FROM audit_chain_bases WHERE chain_key = $1`, [userId]);
    assert.equal(base.pos, 2);
    await t.db.query(`UPDATE audit_chain_bases SET position = 1 WHERE chain_key = $1`, [userId]);
    const moved = await t.app.get(AuditVerifierService).verify();
    assert.equal(moved.ok, false);
    assert.match(moved.reason!, /where 2 was expected/);
    await t.db.query(`UPDATE audit_chain_bases SET position = 2 WHERE chain_key = $1`, [userId]);
    assert.equal((await t.app.get(AuditVerifierService).verify()).ok, true);
    await t.db.query(`UPDATE audit_base_sets SET chains = chains + 1`);
    const forged = await t.app.get(AuditVerifierService).verify();
    assert.equal(forged.ok, false);
    assert.match(forged.reason!, /bases of .* do not match their MAC/);
    await t.db.query(`UPDATE audit_base_sets SET chains = chains - 1`);
    const [first] = await t.db.query(`SELECT id, chain_pos::int AS pos, hash FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos LIMIT 1`, [
      userId,
    ]);
    await tamper(t.db, `DELETE FROM audit_events WHERE id = $1`, [first.id]);
    const gap = await t.app.get(AuditVerifierService).verify();
    assert.equal(gap.ok, false);
    assert.match(gap.reason!, new RegExp(`Chain ${userId} has no events, but its head is at position 3`));
    await t.db.query(`UPDATE audit_chain_bases SET position = $2, hash = $3 WHERE chain_key = $1`, [userId, first.pos, first.hash]);
    const covered = await t.app.get(AuditVerifierService).verify();
    assert.equal(covered.ok, false);
    assert.match(covered.reason!, /bases of .* \(2 read, 2 prepared\) do not match their digest/);
  });

  it("prepares a month's bases a day before it is due, so that its drop only checks, detaches and drops", async () => {
    const t = await app(await freshDatabase());
    const userId = await silentUser(t.db, 'ahead');
    const onlyOld = await silentUser(t.db, 'ahead-old');
    const old = monthStart(5);
    await pastEvents(t, old, [
      { userId, type: 'LOGIN' },
      { userId: onlyOld, type: 'LOGIN' },
      { userId, type: 'LOGOUT' },
    ]);
    await pastEvents(t, monthStart(4), [{ userId, type: 'LOGIN' }]);
    await t.db.transaction((em) => t.app.get(AuditService).record(em, { type: 'LOGIN', userId }));
    const dueIn = (month: Date) => Math.floor((Date.now() - partitionOf(month).to.getTime()) / 86_400_000);

    // A day ahead: the set is prepared, nothing is dropped.
    const ahead = await retention(t, dueIn(old) + 1).maintain();
    assert.deepEqual([ahead.dropped, ahead.held], [[], []]);
    const [prepared] = await t.db.query(`SELECT chains, events::int AS events, prepared_at, dropped_at FROM audit_base_sets`);
    assert.deepEqual({ chains: prepared.chains, events: prepared.events, dropped: prepared.dropped_at }, { chains: 2, events: 3, dropped: null });
    assert.equal((await t.app.get(AuditVerifierService).verify()).ok, true, 'a prepared set is not in force');

    // Due: the drop uses the set as it was prepared.
    const due = await retention(t, dueIn(old)).maintain();
    assert.deepEqual(
      due.dropped.map((d) => [d.name, d.events]),
      [[partitionOf(old).name, 3]],
    );
    const [dropped] = await t.db.query(`SELECT prepared_at, dropped_at FROM audit_base_sets WHERE month = $1`, [monthOf(partitionOf(old))]);
    assert.equal(dropped.prepared_at.getTime(), prepared.prepared_at.getTime());
    assert.ok(dropped.dropped_at);
    const first = await t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: first.ok, dropped: first.dropped }, { ok: true, dropped: 3 });

    // DETACH and DROP run in two transactions (the second holds no lock on audit_events). What a
    // stop between them leaves, a detached month's table, the next run drops; a table named like
    // a month that was not dropped is not touched.
    const tableExists = async (name: string) => (await t.db.query(`SELECT to_regclass($1) IS NOT NULL AS found`, [`"${name}"`]))[0].found;
    assert.equal(await tableExists(partitionOf(old).name), false);
    const notDropped = partitionOf(monthStart(2)).name;
    assert.equal(await tableExists(notDropped), false, 'a month with no partition, for this test');
    await t.db.query(`CREATE TABLE "${partitionOf(old).name}" (LIKE audit_events)`);
    await t.db.query(`CREATE TABLE "${notDropped}" (LIKE audit_events)`);
    const again = await retention(t, dueIn(old)).maintain();
    assert.deepEqual([again.dropped, again.held], [[], []]);
    assert.equal(await tableExists(partitionOf(old).name), false);
    assert.equal(await tableExists(notDropped), true);
    await t.db.query(`DROP TABLE "${notDropped}"`);

    // The set carried forward is checked first: a base moved on in it (so that the events
    // after the true base could be deleted unseen once the next month is dropped) holds the
    // next month back instead of being sealed into its set (0.23.0).
    await t.db.query(`UPDATE audit_chain_bases SET position = position + 1 WHERE chain_key = $1`, [onlyOld]);
    const heldBack = await retention(t, dueIn(monthStart(4))).maintain();
    assert.deepEqual(heldBack.dropped, []);
    assert.deepEqual(heldBack.held, [
      {
        name: partitionOf(monthStart(4)).name,
        reason: `the base set of ${monthOf(partitionOf(old))} does not match its MAC and rows (run the audit verification)`,
      },
    ]);
    await t.db.query(`UPDATE audit_chain_bases SET position = position - 1 WHERE chain_key = $1`, [onlyOld]);

    // The next month: its set is the one before with the month's last events laid over it
    // (the chain with no event in it keeps its base), and the set before it is dropped.
    const next = await retention(t, dueIn(monthStart(4))).maintain();
    assert.deepEqual(
      next.dropped.map((d) => [d.name, d.events]),
      [[partitionOf(monthStart(4)).name, 1]],
    );
    assert.deepEqual(
      await t.db.query(
        `SELECT to_char(month, 'YYYY-MM-DD') AS month, chain_key, position::int AS position FROM audit_chain_bases ORDER BY chain_key`,
      ),
      [
        { month: monthOf(partitionOf(monthStart(4))), chain_key: userId < onlyOld ? userId : onlyOld, position: userId < onlyOld ? 3 : 1 },
        { month: monthOf(partitionOf(monthStart(4))), chain_key: userId < onlyOld ? onlyOld : userId, position: userId < onlyOld ? 1 : 3 },
      ],
    );
    const setMonths = async () =>
      (await t.db.query(`SELECT to_char(month, 'YYYY-MM-DD') AS month FROM audit_base_sets ORDER BY month`)).map((r: { month: string }) => r.month);
    assert.deepEqual(await setMonths(), [monthOf(partitionOf(monthStart(4)))]);
    // The superseded set goes after the DETACH has committed; what a stop before that leaves
    // (its row and table), the next run removes.
    const supersededTable = partitionOf(old).name.replace('audit_events', 'audit_chain_bases');
    await t.db.query(
      `INSERT INTO audit_base_sets (month, chains, events, max_seq, digest, mac, dropped_at) VALUES ($1, 0, 0, 0, repeat('0', 64), repeat('0', 64), now())`,
      [monthOf(partitionOf(old))],
    );
    await t.db.query(`CREATE TABLE "${supersededTable}" PARTITION OF audit_chain_bases FOR VALUES IN ('${monthOf(partitionOf(old))}')`);
    const cleaned = await retention(t, dueIn(monthStart(4))).maintain();
    assert.deepEqual([cleaned.dropped, cleaned.held], [[], []]);
    assert.deepEqual(await setMonths(), [monthOf(partitionOf(monthStart(4)))]);
    assert.equal(await tableExists(supersededTable), false);
    const second = await t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: second.ok, reason: second.reason, dropped: second.dropped }, { ok: true, reason: null, dropped: 4 });

    // A head deleted with its chain's base still in the set is detected.
    await t.db.query(`DELETE FROM audit_chain_heads WHERE chain_key = $1`, [onlyOld]);
    const headless = await t.app.get(AuditVerifierService).verify();
    assert.equal(headless.ok, false);
    assert.match(headless.reason!, new RegExp(`Chain ${onlyOld} has a base but no head`));
  });

  it('prepares the bases again when the month changed after they were prepared', async () => {
    const { t, late, old, days } = await oneOldMonth('late');
    await retention(t, days + 1).maintain();
    assert.deepEqual(await preparedSet(t, old), { events: 1, settled: true });
    // An event dated in the month after its bases were prepared (a clock far behind).
    await pastEvents(t, old, [{ userId: late, type: 'LOGIN' }]);

    const first = await retention(t, days).maintain();
    assert.deepEqual(first.dropped, []);
    assert.deepEqual(first.held, [
      { name: partitionOf(old).name, reason: "events were written into it after its chains' bases were prepared; the next run prepares them again" },
    ]);
    assert.equal((await partitionsOf(t.db))[partitionOf(old).name], 2, 'nothing is lost');
    const second = await retention(t, days).maintain();
    assert.deepEqual(
      second.dropped.map((d) => [d.name, d.events]),
      [[partitionOf(old).name, 2]],
    );
    await assertVerifies(t, 2);
  });

  it("waits, while preparing a month's bases, for a writer that took its seq before and commits after", async () => {
    const { t, late, old, days } = await oneOldMonth('settle');
    const writer = await uncommittedPastEvent(t, old, late);
    let prepared = false;
    const preparation = retention(t, days + 1)
      .maintain()
      .finally(() => (prepared = true));
    try {
      await sleep(500);
      assert.equal(prepared, false, 'the preparation waits for the open transaction');
      await writer.commitTransaction();
    } finally {
      if (writer.isTransactionActive) await writer.rollbackTransaction();
      await writer.release();
    }
    assert.deepEqual((await preparation).held, []);
    // The late event is in the set, so the drop, which only counts the events above the
    // settled seq, finds the month as it was prepared and drops both events.
    assert.deepEqual(await preparedSet(t, old), { events: 2, settled: true });
    const drop = await retention(t, days).maintain();
    assert.deepEqual([drop.dropped.map((d) => [d.name, d.events]), drop.held], [[[partitionOf(old).name, 2]], []]);
    await assertVerifies(t, 2);
  });

  it('counts the whole month at its drop when the preparation could not wait out an open transaction', async () => {
    const { t, late, old, days } = await oneOldMonth('unsettled');
    const writer = await uncommittedPastEvent(t, old, late);
    try {
      const impatient = retention(t, days + 1);
      impatient.settleTimeoutMs = 200;
      assert.deepEqual((await impatient.maintain()).held, []);
      assert.deepEqual(await preparedSet(t, old), { events: 1, settled: false });
      await writer.commitTransaction();
    } finally {
      if (writer.isTransactionActive) await writer.rollbackTransaction();
      await writer.release();
    }
    const first = await retention(t, days).maintain();
    assert.deepEqual(
      [first.dropped, first.held.map((h) => h.reason)],
      [[], ["events were written into it after its chains' bases were prepared; the next run prepares them again"]],
    );
    const second = await retention(t, days).maintain();
    assert.deepEqual(
      second.dropped.map((d) => [d.name, d.events]),
      [[partitionOf(old).name, 2]],
    );
    await assertVerifies(t, 2);
  });

  it('stops waiting for older transactions at shutdown (stopWaiting), leaving the set unsettled', async () => {
    const { t, late, old, days } = await oneOldMonth('stopping');
    const writer = await uncommittedPastEvent(t, old, late);
    try {
      const service = retention(t, days + 1); // waits up to 30 s by default
      const preparation = service.maintain();
      await sleep(300);
      service.stopWaiting();
      const outcome = await Promise.race([preparation, sleep(10_000).then(() => 'still waiting' as const)]);
      assert.notEqual(outcome, 'still waiting');
      assert.deepEqual(await preparedSet(t, old), { events: 1, settled: false });
    } finally {
      await writer.rollbackTransaction();
      await writer.release();
    }
  });

  it('does not settle seq when its sequence hands out cached values (a session could still take a lower one)', async () => {
    const { t, old, days } = await oneOldMonth('cached');
    await t.db.query(`ALTER TABLE audit_events ALTER COLUMN seq SET CACHE 10`);
    assert.deepEqual((await retention(t, days + 1).maintain()).held, []);
    assert.deepEqual(await preparedSet(t, old), { events: 1, settled: false });
    const drop = await retention(t, days).maintain();
    assert.deepEqual([drop.dropped.map((d) => [d.name, d.events]), drop.held], [[[partitionOf(old).name, 1]], []]);
    await assertVerifies(t, 1);
  });

  it('carries the bases 0.8.0 kept in the chain heads into the first set, and refuses a forged one', async () => {
    const t = await app(await freshDatabase());
    const userId = await silentUser(t.db, 'legacy');
    const older = monthStart(6);
    await pastEvents(t, older, [
      { userId, type: 'LOGIN' },
      { userId, type: 'LOGOUT' },
    ]);
    await pastEvents(t, monthStart(5), [{ userId, type: 'LOGIN' }]);
    // What 0.8.0's drop of the older month left: the month gone, the chain's base in its head.
    const [last] = await t.db.query(`SELECT hash FROM audit_events WHERE chain_key = $1 AND chain_pos = 2`, [userId]);
    await t.db.query(`UPDATE audit_chain_heads SET base_position = 2, base_hash = $2, base_mac = $3 WHERE chain_key = $1`, [
      userId,
      last.hash,
      legacyBaseMac(TEST_AUDIT_HMAC_KEY, userId, 2, last.hash),
    ]);
    await t.db.query(`DROP TABLE "${partitionOf(older).name}"`);
    const legacy = await t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: legacy.ok, reason: legacy.reason, dropped: legacy.dropped }, { ok: true, reason: null, dropped: 2 });

    const days = Math.floor((Date.now() - partitionOf(monthStart(5)).to.getTime()) / 86_400_000);
    await t.db.query(`UPDATE audit_chain_heads SET base_mac = $2 WHERE chain_key = $1`, [
      userId,
      legacyBaseMac(TEST_AUDIT_HMAC_KEY, userId, 1, last.hash),
    ]);
    const refused = await retention(t, days).maintain();
    assert.deepEqual(refused.dropped, []);
    assert.deepEqual(refused.held, [
      {
        name: partitionOf(monthStart(5)).name,
        reason: `the base of chain ${userId} (kept by 0.8.0) does not match its MAC (run the audit verification)`,
      },
    ]);

    await t.db.query(`UPDATE audit_chain_heads SET base_mac = $2 WHERE chain_key = $1`, [
      userId,
      legacyBaseMac(TEST_AUDIT_HMAC_KEY, userId, 2, last.hash),
    ]);
    const upgraded = await retention(t, days).maintain();
    assert.deepEqual(
      upgraded.dropped.map((d) => d.name),
      [partitionOf(monthStart(5)).name],
    );
    // The set in force now; the head's old base is no longer read (changing it changes nothing).
    await t.db.query(`UPDATE audit_chain_heads SET base_mac = NULL WHERE chain_key = $1`, [userId]);
    const after = await t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: after.ok, reason: after.reason, dropped: after.dropped }, { ok: true, reason: null, dropped: 3 });
  });

  it("prepares a month's bases beyond the pool's statement timeout (a large month)", async () => {
    const url = await freshDatabase();
    const t = await app(url);
    const userId = await silentUser(t.db, 'large-month');
    await pastEvents(t, monthStart(5), [{ userId, type: 'LOGIN' }]);
    // The same pool with a statement timeout of 200 ms, and a set that takes 300 ms to insert.
    const options = dataSourceOptions(url) as DataSourceOptions & { extra: Record<string, unknown> };
    const slow = await new DataSource({ ...options, extra: { ...options.extra, statement_timeout: 200 } }).initialize();
    try {
      await t.db.query(`CREATE FUNCTION slow_bases() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$`);
      await t.db.query(`CREATE TRIGGER slow_bases BEFORE INSERT ON audit_chain_bases FOR EACH STATEMENT EXECUTE FUNCTION slow_bases()`);
      const days = Math.floor((Date.now() - partitionOf(monthStart(5)).to.getTime()) / 86_400_000);
      const result = await retention(t, days, slow).maintain();
      assert.deepEqual([result.dropped.map((d) => d.name), result.held], [[partitionOf(monthStart(5)).name], []]);
      await assert.rejects(slow.query(`SELECT pg_sleep(0.3)`), /statement timeout/);
    } finally {
      await slow.destroy();
    }
    assert.equal((await t.app.get(AuditVerifierService).verify()).ok, true);
  });

  it('keeps a month whose chains go on earlier in a later month, and says why', async () => {
    const t = await app(await freshDatabase(), { AUDIT_RETENTION_DAYS: '30' });
    const user = await registerUser(t.http);
    // Sealed after today's REGISTER, so later in the chain than it though earlier in time
    // (what a clock stepped back would give): dropping the month would leave a hole.
    await pastEvents(t, monthStart(5), [{ userId: user.id, type: 'LOGIN' }]);
    const result = await t.app.get(AuditPartitionsService).maintain();
    assert.deepEqual(result.dropped, []);
    assert.equal(result.held.length, 1);
    assert.equal(result.held[0].name, partitionOf(monthStart(5)).name);
    assert.match(result.held[0].reason, /comes before some of its events/);
    assert.equal(metric((await t.http.get('/metrics')).text, 'sessionary_audit_partitions_held'), 1, 'an alert sees it, not only the log');
    assert.equal((await partitionsOf(t.db))[partitionOf(monthStart(5)).name], 1);
    assert.equal((await t.app.get(AuditVerifierService).verify()).ok, true);
  });

  it('keeps a month in which a chain misses a position (a deleted event), so the evidence stays', async () => {
    const t = await app(await freshDatabase(), { AUDIT_RETENTION_DAYS: '30' });
    const userId = await silentUser(t.db, 'gapped');
    await pastEvents(t, monthStart(6), [
      { userId, type: 'LOGIN' },
      { userId, type: 'LOGOUT' },
      { userId, type: 'LOGIN' },
    ]);
    await tamper(t.db, `DELETE FROM audit_events WHERE chain_key = $1 AND chain_pos = 2`, [userId]);
    const result = await t.app.get(AuditPartitionsService).maintain();
    assert.deepEqual(result.dropped, []);
    assert.deepEqual(result.held, [
      { name: partitionOf(monthStart(6)).name, reason: `chain ${userId} misses positions up to 3 in this month (run the audit verification)` },
    ]);
    assert.equal((await partitionsOf(t.db))[partitionOf(monthStart(6)).name], 2);
    assert.equal((await t.app.get(AuditVerifierService).verify()).ok, false);
  });

  it('keeps a month until every destination the log is shipped to has its events, then drops it', async () => {
    const shipDir = mkdtempSync(join(tmpdir(), 'sessionary-retention-ship-'));
    scratch.push(shipDir);
    const t = await app(await freshDatabase(), { AUDIT_SHIP_DIR: shipDir, AUDIT_SHIP_INTERVAL: '86400' });
    const userId = await silentUser(t.db, 'unshipped');
    const old = monthStart(5);
    await pastEvents(t, old, [{ userId, type: 'LOGIN' }]);
    const days = Math.floor((Date.now() - partitionOf(old).to.getTime()) / 86_400_000);
    const [{ last }] = await t.db.query(`SELECT max(seq)::text AS last FROM "${partitionOf(old).name}"`);

    const held = await retention(t, days).maintain();
    assert.deepEqual(held.dropped, []);
    assert.deepEqual(held.held, [
      {
        name: partitionOf(old).name,
        reason: `its events run through seq ${last}, and directory ${shipDir} has them through seq 0 only; it is dropped once they are shipped`,
      },
    ]);
    assert.equal((await partitionsOf(t.db))[partitionOf(old).name], 1);

    // Another log's piece in the directory (or this database restored from an older backup): its
    // progress is not this log's, so it ships nothing of this month, and nothing is dropped.
    const foreign = join(shipDir, `audit-after-${'0'.repeat(19)}-through-${'9'.repeat(19)}.ndjson`);
    writeFileSync(foreign, '');
    const heldForeign = await retention(t, days).maintain();
    assert.deepEqual(heldForeign.dropped, []);
    assert.equal(heldForeign.held.length, 1);
    assert.match(
      heldForeign.held[0].reason,
      /runs through seq 9{19}, past this audit log's newest seq \(\d+\): the directory holds another log's pieces.*; nothing is dropped until that is resolved$/,
    );
    rmSync(foreign);

    assert.ok('shipped' in (await t.app.get(AuditShipTask).handleTick()).directory!);
    const dropped = await retention(t, days).maintain();
    assert.deepEqual([dropped.dropped.map((d) => [d.name, d.events]), dropped.held], [[[partitionOf(old).name, 1]], []]);
    await assertVerifies(t, 1);
    // The last event shipped went with its month: no sign of another log (its chain's head is
    // past it), so shipping goes on.
    const newestPiece = readdirSync(shipDir)
      .filter((n) => n.endsWith('.ndjson'))
      .sort()
      .at(-1)!;
    assert.equal((await lastEventOfPiece(join(shipDir, newestPiece)))?.seq, last);
    assert.deepEqual(await t.app.get(AuditShipTask).handleTick(), { directory: { skipped: 'nothing new' } });
  });

  it('leaves every month in place without AUDIT_RETENTION_DAYS (an archive directory without it is refused at boot)', async () => {
    const archiveDir = join(tmpdir(), `sessionary-no-archive-${process.pid}`);
    const url = await freshDatabase();
    await assert.rejects(app(url, { AUDIT_ARCHIVE_DIR: archiveDir }), /AUDIT_ARCHIVE_DIR is set without AUDIT_RETENTION_DAYS/);
    const t = await app(url);
    const userId = await silentUser(t.db, 'forever');
    await pastEvents(t, monthStart(14), [{ userId, type: 'LOGIN' }]);
    const result = await t.app.get(AuditPartitionsService).maintain();
    assert.deepEqual([result.dropped, result.held], [[], []]);
    assert.equal((await partitionsOf(t.db))[partitionOf(monthStart(14)).name], 1);
    assert.equal(existsSync(archiveDir), false);
    // A retention too long for a date (configuration refuses it) drops nothing: no cutoff, no month looks expired.
    await assert.rejects(retention(t, 999_999_999).maintain(), /AUDIT_RETENTION_DAYS \(999999999\) gives no cutoff date; nothing is dropped/);
    assert.equal((await partitionsOf(t.db))[partitionOf(monthStart(14)).name], 1);
  });
});

// Keeps the 0.8.0 MAC helper honest: a base's MAC is over its chain, position and hash.
describe('legacyBaseMac', () => {
  it('changes with each of chain, position and hash', () => {
    const a = legacyBaseMac('k', 'c', 1, 'h');
    assert.equal(
      a,
      createHmac('sha256', 'k')
        .update(JSON.stringify(['sessionary.audit.base.v1', 'c', 1, 'h']))
        .digest('hex'),
    );
    assert.notEqual(legacyBaseMac('k', 'd', 1, 'h'), a);
    assert.notEqual(legacyBaseMac('k', 'c', 2, 'h'), a);
    assert.notEqual(legacyBaseMac('k', 'c', 1, 'i'), a);
  });
});
