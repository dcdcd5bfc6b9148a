import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createWriteStream, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, it } from 'node:test';
import { ConfigService } from '@nestjs/config';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { checkpointMac, type Checkpoint } from '../src/audit/audit-chain';
import { AuditBaseSets } from '../src/audit/audit-base-sets';
import { AuditChainService } from '../src/audit/audit-chain.service';
import { verifyExportFile } from '../src/audit/audit-export-file-verifier';
import { AuditExportService } from '../src/audit/audit-export.service';
import { AuditMonthOrder } from '../src/audit/audit-month-order';
import { AuditPartitionsService, partitionOf } from '../src/audit/audit-partitions.service';
import { AuditPartitionsTask } from '../src/audit/audit-partitions.task';
import { AuditShipDestinations } from '../src/audit/audit-ship-destinations';
import { AuditVerifierService } from '../src/audit/audit-verifier.service';
import type { AppConfig } from '../src/config/config';
import { SESSIONARY_DATA_SOURCE_TOKEN } from '../src/database/data-source-name';
import { monthStart, partitionsOf, pastEvents, silentUser } from './helpers/audit-months';
import { tamper } from './helpers/db';
import { metric } from './helpers/service-process';
import { appsClosedAfterEachTest } from './helpers/test-scope';
import { createTestApp, freshDatabase, TEST_AUDIT_HMAC_KEY, TestApp } from './helpers/test-app';

const { opened, scratch } = appsClosedAfterEachTest();

/** An app on a database of its own, whose boot-time maintenance run is out of the tests' way. */
async function app(overrides: Record<string, string> = {}): Promise<TestApp> {
  const t = await createTestApp({ DATABASE_URL: await freshDatabase(), AUDIT_RETENTION_DAYS: '30', ...overrides });
  opened.push(t);
  await t.app.get(AuditPartitionsTask).handleTick();
  return t;
}

/** What a partitions service logged, line by line (its own Logger, replaced). */
interface Logged {
  level: 'log' | 'warn' | 'error';
  message: unknown;
}

function capturingLogs(service: AuditPartitionsService): Logged[] {
  const lines: Logged[] = [];
  const push = (level: Logged['level']) => (message: unknown) => void lines.push({ level, message });
  Object.assign(service, {
    logger: { log: push('log'), warn: push('warn'), error: push('error'), debug: () => undefined, verbose: () => undefined },
  });
  return lines;
}

const dropLines = (lines: Logged[]) =>
  lines
    .map((l) => l.message)
    .filter((m): m is { event: string; partition: string; removeMs: number | null } => (m as { event?: string }).event === 'audit.partition_dropped');

/** A partitions service of the app's with its own base sets (to make one step fail). */
function serviceWith(t: TestApp, bases: AuditBaseSets): AuditPartitionsService {
  return new AuditPartitionsService(
    t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN),
    t.app.get(AuditChainService),
    t.app.get(AuditExportService),
    bases,
    t.app.get(AuditMonthOrder),
    t.app.get(AuditShipDestinations),
    t.app.get(ConfigService) as ConfigService<AppConfig, true>,
  );
}

/** Events of a user of their own in each month (months back), oldest first; the users. */
async function monthsOfEvents(t: TestApp, monthsBack: number[]): Promise<string[]> {
  const users: string[] = [];
  for (const back of monthsBack) {
    const userId = await silentUser(t.db, `runs-${back}`);
    users.push(userId);
    await pastEvents(t, monthStart(back), [
      { userId, type: 'LOGIN' },
      { userId, type: 'LOGOUT' },
    ]);
  }
  return users;
}

const name = (back: number) => partitionOf(monthStart(back)).name;
const heldGauge = async (t: TestApp) => metric((await t.http.get('/metrics')).text, 'sessionary_audit_partitions_held');

describe('audit retention runs: what a run that cannot drop every month does (e2e)', () => {
  it('counts every month past retention that is kept in sessionary_audit_partitions_held, the held one and those behind it', async () => {
    const t = await app();
    const [gapped] = await monthsOfEvents(t, [6, 5, 4]);
    await tamper(t.db, `DELETE FROM audit_events WHERE chain_key = $1 AND chain_pos = 1`, [gapped]);
    const service = t.app.get(AuditPartitionsService);
    const logs = capturingLogs(service);
    const result = await service.maintain();
    assert.deepEqual(result.dropped, []);
    assert.deepEqual(
      result.held.map((h) => h.name),
      [name(6)],
    );
    assert.equal(service.stats.heldPastRetention, 3);
    assert.equal(await heldGauge(t), 3, 'three months past retention are still there');
    const warnings = logs.filter((l) => l.level === 'warn').map((l) => String(l.message));
    assert.equal(warnings.length, 1, JSON.stringify(warnings));
    assert.match(
      warnings[0],
      new RegExp(`^Audit partition ${name(6)} is past retention but kept: .*; 2 later month\\(s\\) past retention wait behind it`),
    );
  });

  it('holds a month whose lock is not granted in time and goes on: the drops before it logged and counted, the run’s figures kept', async () => {
    const t = await app();
    await monthsOfEvents(t, [7, 6, 5]);
    const service = t.app.get(AuditPartitionsService);
    const logs = capturingLogs(service);
    // A writer of the month (or a long read): its lock stays until it ends.
    const writer = new Client({ connectionString: t.config.DATABASE_URL });
    await writer.connect();
    try {
      await writer.query('BEGIN');
      await writer.query(`LOCK TABLE "${name(6)}" IN ROW EXCLUSIVE MODE`);
      const before = service.stats.lastRunAt!;
      const result = await service.maintain();
      assert.deepEqual(
        result.dropped.map((d) => [d.name, d.events]),
        [[name(7), 2]],
      );
      assert.equal(result.held.length, 1, JSON.stringify(result.held));
      assert.equal(result.held[0].name, name(6));
      assert.match(
        result.held[0].reason,
        /^audit_events or the month was busy: a lock its drop takes was not granted within 5s .*; trying again next run$/,
      );
      assert.deepEqual(
        dropLines(logs).map((l) => l.partition),
        [name(7)],
      );
      assert.equal(typeof dropLines(logs)[0].removeMs, 'number');
      assert.deepEqual([service.stats.droppedPartitions, service.stats.droppedEvents], [1, 2]);
      assert.ok(service.stats.lastRunAt! > before, 'the run went to its end');
      assert.equal(await heldGauge(t), 2);
    } finally {
      await writer.query('ROLLBACK');
      await writer.end();
    }
    const next = await service.maintain();
    assert.deepEqual([next.dropped.map((d) => d.name), next.held], [[name(6), name(5)], []]);
    assert.equal(await heldGauge(t), 0);
    const verification = await t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: verification.ok, reason: verification.reason, dropped: verification.dropped }, { ok: true, reason: null, dropped: 6 });
  });

  it('holds a month whose archive finds every export slot taken, and goes on; the next run archives and drops it', async () => {
    const archiveDir = mkdtempSync(join(tmpdir(), 'sessionary-archive-slots-'));
    scratch.push(archiveDir);
    const t = await app({ AUDIT_ARCHIVE_DIR: archiveDir, AUDIT_EXPORT_MAX_CONCURRENT: '2' });
    await monthsOfEvents(t, [5]);
    const exporter = t.app.get(AuditExportService);
    // Two admins' exports streaming to slow clients.
    const streaming: Readable[] = [await exporter.open({}), await exporter.open({})];
    const service = t.app.get(AuditPartitionsService);
    try {
      const before = service.stats.lastRunAt!;
      const result = await service.maintain();
      assert.deepEqual(result.dropped, []);
      assert.deepEqual(result.held, [
        {
          name: name(5),
          reason:
            'every audit export slot of this instance (AUDIT_EXPORT_MAX_CONCURRENT) was taken, so it could not be archived; trying again next run',
        },
      ]);
      assert.ok(service.stats.lastRunAt! > before, 'the run went to its end');
      assert.equal(await heldGauge(t), 1);
      assert.deepEqual(readdirSync(archiveDir), []);
    } finally {
      for (const stream of streaming) {
        stream.destroy();
        await once(stream, 'close');
      }
    }
    const next = await service.maintain();
    assert.deepEqual(
      next.dropped.map((d) => [d.name, d.archive]),
      [[name(5), join(archiveDir, `audit-events-${partitionOf(monthStart(5)).from.toISOString().slice(0, 7)}.ndjson`)]],
    );
  });

  it('holds a month whose archive no checkpoint would close (another instance writing one), and archives it with one that covers its last event next run', async () => {
    const archiveDir = mkdtempSync(join(tmpdir(), 'sessionary-archive-closing-'));
    scratch.push(archiveDir);
    const t = await app({ AUDIT_ARCHIVE_DIR: archiveDir });
    const chain = t.app.get(AuditChainService);
    const checkpoint = chain.checkpoint.bind(chain);
    // Another instance holds the checkpoint's lock: this one writes none (its scheduled job neither).
    chain.checkpoint = () => Promise.resolve(undefined);
    const service = t.app.get(AuditPartitionsService);
    try {
      await monthsOfEvents(t, [5]);
      const result = await service.maintain();
      assert.deepEqual(result.dropped, []);
      assert.equal(result.held.length, 1, JSON.stringify(result.held));
      assert.match(result.held[0].reason, /^no checkpoint covers the month's last event yet .*; trying again next run$/);
      assert.deepEqual(readdirSync(archiveDir), []);
    } finally {
      chain.checkpoint = checkpoint;
    }
    const next = await service.maintain();
    assert.deepEqual(
      next.dropped.map((d) => d.name),
      [name(5)],
    );
    const stem = join(archiveDir, `audit-events-${partitionOf(monthStart(5)).from.toISOString().slice(0, 7)}`);
    const closing = JSON.parse(readFileSync(`${stem}.checkpoint.json`, 'utf8')) as Checkpoint;
    const lines = readFileSync(`${stem}.ndjson`, 'utf8').trim().split('\n');
    const lastSeq = (JSON.parse(lines[lines.length - 2]) as { seq: string }).seq;
    assert.ok(BigInt(closing.maxSeq) >= BigInt(lastSeq), `checkpoint ${closing.maxSeq} covers the month's last event ${lastSeq}`);
  });

  it('never replaces an archive: the same bytes are kept with their checkpoint; other bytes stay, and the month goes beside them', async () => {
    const archiveDir = mkdtempSync(join(tmpdir(), 'sessionary-archive-kept-'));
    scratch.push(archiveDir);
    const t = await app({ AUDIT_ARCHIVE_DIR: archiveDir });
    await monthsOfEvents(t, [6, 5]);
    const base = (back: number) => join(archiveDir, `audit-events-${partitionOf(monthStart(back)).from.toISOString().slice(0, 7)}`);
    // The older month archived by a run whose drop did not happen (or this database before a restore): the same bytes.
    const { from, to } = partitionOf(monthStart(6));
    await pipeline(await t.app.get(AuditExportService).open({ from, to }), createWriteStream(`${base(6)}.ndjson`));
    const sameBytes = readFileSync(`${base(6)}.ndjson`);
    // With the checkpoint that closed it then, covering its last event.
    const chain = t.app.get(AuditChainService);
    await chain.checkpoint(true);
    const closedThen = `${JSON.stringify(await chain.latestCheckpoint())}\n`;
    writeFileSync(`${base(6)}.checkpoint.json`, closedThen);
    // The later one archived by another log (another deployment sharing the directory): the only copy of its events.
    writeFileSync(`${base(5)}.ndjson`, 'another log’s month\n');
    writeFileSync(`${base(5)}.checkpoint.json`, 'another log’s checkpoint\n');
    const [{ last }] = await t.db.query(`SELECT max(seq)::text AS last FROM "${name(5)}"`);

    const service = t.app.get(AuditPartitionsService);
    const logs = capturingLogs(service);
    const result = await service.maintain();
    assert.deepEqual(result.held, []);
    assert.deepEqual(
      result.dropped.map((d) => [d.name, d.archive]),
      [
        [name(6), `${base(6)}.ndjson`],
        [name(5), `${base(5)}.${last}.ndjson`],
      ],
    );
    assert.deepEqual(readFileSync(`${base(6)}.ndjson`), sameBytes);
    assert.equal(readFileSync(`${base(6)}.checkpoint.json`, 'utf8'), closedThen);
    assert.equal(readFileSync(`${base(5)}.ndjson`, 'utf8'), 'another log’s month\n');
    assert.equal(readFileSync(`${base(5)}.checkpoint.json`, 'utf8'), 'another log’s checkpoint\n');

    // This log's month, beside them: it verifies offline, closed by its checkpoint.
    const archived = await verifyExportFile(`${base(5)}.${last}.ndjson`, TEST_AUDIT_HMAC_KEY);
    assert.deepEqual({ ok: archived.ok, lines: archived.lines, reason: archived.reason }, { ok: true, lines: 2, reason: null });
    const closing = JSON.parse(readFileSync(`${base(5)}.${last}.checkpoint.json`, 'utf8')) as Checkpoint;
    const { mac, ...fields } = closing;
    assert.equal(checkpointMac(TEST_AUDIT_HMAC_KEY, fields), mac);
    assert.ok(BigInt(closing.maxSeq) >= BigInt(last));
    const warnings = logs.filter((l) => l.level === 'warn').map((l) => String(l.message));
    assert.equal(warnings.length, 1, JSON.stringify(warnings));
    assert.ok(warnings[0].startsWith(`${base(5)}.ndjson holds other events of ${name(5)} (`), warnings[0]);
    assert.ok(warnings[0].endsWith(`: it is kept as it is, and this archive is ${base(5)}.${last}.ndjson`), warnings[0]);
    assert.deepEqual(
      readdirSync(archiveDir).filter((f) => f.endsWith('.partial')),
      [],
    );
  });

  it("gives a kept archive whose checkpoint does not cover its last event (an earlier version's run) a checkpoint that does, beside the old one", async () => {
    const archiveDir = mkdtempSync(join(tmpdir(), 'sessionary-archive-old-closing-'));
    scratch.push(archiveDir);
    const t = await app({ AUDIT_ARCHIVE_DIR: archiveDir });
    const chain = t.app.get(AuditChainService);
    await chain.checkpoint(true);
    const older = `${JSON.stringify(await chain.latestCheckpoint())}\n`;
    await monthsOfEvents(t, [5]);
    const base = join(archiveDir, `audit-events-${partitionOf(monthStart(5)).from.toISOString().slice(0, 7)}`);
    const { from, to } = partitionOf(monthStart(5));
    await pipeline(await t.app.get(AuditExportService).open({ from, to }), createWriteStream(`${base}.ndjson`));
    writeFileSync(`${base}.checkpoint.json`, older);
    const [{ last }] = await t.db.query(`SELECT max(seq)::text AS last FROM "${name(5)}"`);

    const result = await t.app.get(AuditPartitionsService).maintain();
    assert.deepEqual(
      result.dropped.map((d) => [d.name, d.archive]),
      [[name(5), `${base}.ndjson`]],
    );
    assert.equal(readFileSync(`${base}.checkpoint.json`, 'utf8'), older, 'the old one is kept as it is');
    const beside = readdirSync(archiveDir).filter(
      (f) => f.startsWith(`${base.split('/').pop()}.`) && f.endsWith('.checkpoint.json') && f !== `${base.split('/').pop()}.checkpoint.json`,
    );
    assert.equal(beside.length, 1, JSON.stringify(readdirSync(archiveDir)));
    const closing = JSON.parse(readFileSync(join(archiveDir, beside[0]), 'utf8')) as Checkpoint;
    assert.ok(BigInt(closing.maxSeq) >= BigInt(last), `${closing.maxSeq} covers ${last}`);
  });

  it('counts and logs a drop once its DETACH committed, even when what follows fails; the next run finishes it', async () => {
    const t = await app();
    await monthsOfEvents(t, [5]);
    const bases = t.app.get(AuditBaseSets);
    const failing = Object.create(bases, {
      discardSuperseded: { value: () => Promise.reject(new Error('the database went away')) },
    }) as AuditBaseSets;
    const service = serviceWith(t, failing);
    const logs = capturingLogs(service);
    await assert.rejects(service.maintain(), /the database went away/);
    assert.deepEqual([service.stats.droppedPartitions, service.stats.droppedEvents], [1, 2]);
    const [line] = dropLines(logs);
    assert.equal(line?.partition, name(5), JSON.stringify(logs));
    assert.equal(typeof line.removeMs, 'number', 'its table was dropped; the superseded sets were not');
    assert.equal((await partitionsOf(t.db))[name(5)], undefined);

    assert.deepEqual((await t.app.get(AuditPartitionsService).maintain()).held, []);
    const verification = await t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: verification.ok, reason: verification.reason, dropped: verification.dropped }, { ok: true, reason: null, dropped: 2 });
  });
});
