import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { once } from 'node:events';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { after, afterEach, before, describe, it } from 'node:test';
import { LoggerService } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { AuditChainService } from '../src/audit/audit-chain.service';
import { AuditCheckpointTask } from '../src/audit/audit-checkpoint.task';
import { ConfigService } from '@nestjs/config';
import { DataSource, DataSourceOptions } from 'typeorm';
import { cleanupChainKey, GENESIS_HASH, LOCK_HEADS, PG_MICROS_UTC } from '../src/audit/audit-chain';
import { SessionMaintenanceService } from '../src/sessions/session-maintenance.service';
import { AuditBaseSets } from '../src/audit/audit-base-sets';
import { AuditVerifierService } from '../src/audit/audit-verifier.service';
import { microsUtcOf, runVerifyPass, VERIFY_PASS_SETTINGS } from '../src/audit/audit-verify-pass';
import { Client } from 'pg';
import type { AppConfig } from '../src/config/config';
import { AuditService } from '../src/audit/audit.service';
import type { AuditMetadata } from '../src/audit/audit-event.entity';
import { lockHeads } from '../src/audit/lock-heads';
import { bearer, login, registerUser, sleep, TestUser } from './helpers/factories';
import { CliResult, runCli, runCliProcess, runCliWith } from './helpers/cli';
import { createTestApp, freshDatabase, TestApp } from './helpers/test-app';
import { dataSourceOptions, MIGRATIONS } from '../src/database/data-source.options';
import { AuditCheckpointHeads1766300000000 } from '../src/database/migrations/1766300000000-AuditCheckpointHeads';
import { runMigrationsLocked } from '../src/database/migrate';
import { tamper } from './helpers/db';
import { CapturingLogger } from './helpers/capturing-logger';
import { recordQueryRunners, recordStatements, Statement, textOf } from './helpers/query-runners';
import { SESSIONARY_DATA_SOURCE_TOKEN } from '../src/database/data-source-name';

interface Fixture {
  t: TestApp;
  url: string;
  adminToken: string;
  user: TestUser;
  other: TestUser;
  /** The user's chain, by position (1-based: chain[0] is position 1). */
  chain: Array<{ id: string; hash: string }>;
}

/** An app on a fresh database with an admin, and a user whose chain holds at least 8 events. */
async function fixture(overrides: Record<string, string> = {}, logger?: LoggerService): Promise<Fixture> {
  const url = await freshDatabase();
  const t = await createTestApp({ DATABASE_URL: url, ...overrides }, { logger });
  const admin = await registerUser(t.http);
  await t.db.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
  const adminToken = (await login(t.http, admin)).accessToken;
  const user = await registerUser(t.http);
  const other = await registerUser(t.http);
  for (let i = 0; i < 3; i++) {
    const tokens = await login(t.http, user, `agent-${i}`);
    const refreshed = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
    assert.equal(refreshed.status, 200);
  }
  await login(t.http, other);
  // An event without a user: the global chain.
  assert.equal((await t.http.post('/api/v1/auth/login').send({ email: 'nobody@example.test', password: 'wrong-password-123' })).status, 401);
  const chain = await t.db.query(`SELECT id, hash FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos`, [user.id]);
  assert.ok(chain.length >= 7, `expected a long chain, got ${chain.length}`);
  return { t, url, adminToken, user, other, chain };
}

async function apiVerify(f: Fixture): Promise<{ ok: boolean; checked: number; firstBrokenId: string | null; reason: string | null }> {
  const res = await f.t.http.get('/api/v1/admin/audit/verify').set('Authorization', `Bearer ${f.adminToken}`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.deepEqual(Object.keys(res.body).sort(), ['checked', 'firstBrokenId', 'ok', 'reason']);
  return res.body;
}

/**
 * Records one event for the user on an instance and answers the kinds of audit statements it
 * ran (a spy on the real connection): `try` (the one-statement append), `lock` (an existing
 * head locked), `create-or-lock` (heads created where missing, and locked), `append` (the
 * locking path's append). With `rollBack`, the transaction rolls back.
 */
async function recordedAppendKinds(t: TestApp, userId: string, rollBack = false): Promise<string[]> {
  const statements: Statement[] = [];
  await t.db
    .transaction(async (em) => {
      recordStatements(em.queryRunner!, statements);
      await t.app.get(AuditService).record(em, { type: 'PROFILE_UPDATED', userId, metadata: { fields: 'username' } });
      if (rollBack) throw new Error('rolled back on purpose');
    })
    .catch((error: Error) => assert.equal(error.message, 'rolled back on purpose'));
  return statements
    .map(textOf)
    .filter((s) => !/^(COMMIT|ROLLBACK)$/.test(s))
    .map(appendKindOf);
}

/** The kind of an audit append's statement (see recordedAppendKinds), or the statement itself. */
function appendKindOf(statement: string): string {
  return /moved AS/.test(statement)
    ? 'try'
    : /INSERT INTO audit_chain_heads/.test(statement)
      ? 'create-or-lock'
      : /FROM audit_chain_heads WHERE chain_key = \$1 FOR UPDATE/.test(statement)
        ? 'lock'
        : /FROM audit_events WHERE chain_key = \$1 AND chain_pos = \$2/.test(statement)
          ? 'tip'
          : /WITH appended/.test(statement)
            ? 'append'
            : statement;
}

/** A seq no event holds: taken by a transaction that rolled back, as any failed write leaves one. */
async function unusedSeq(db: DataSource): Promise<string> {
  const runner = db.createQueryRunner();
  await runner.connect();
  try {
    await runner.startTransaction();
    const [{ seq }] = await runner.query(`INSERT INTO audit_events (type, user_id, metadata) VALUES ('LOGIN', NULL, '{}') RETURNING seq::text`);
    await runner.rollbackTransaction();
    return seq;
  } finally {
    await runner.release();
  }
}

/** Tampering: the event deleted and inserted again, unchanged, with `seq` (OVERRIDING SYSTEM VALUE). */
async function insertAgainWithSeq(db: DataSource, eventId: string, seq: string): Promise<void> {
  const columns = `id, type, user_id, session_id, ip_address, user_agent, metadata, created_at, chain_key, chain_pos, prev_hash, hash`;
  await tamper(db, `CREATE TABLE moved_event AS SELECT ${columns} FROM audit_events WHERE id = $1`, [eventId]);
  await tamper(db, `DELETE FROM audit_events WHERE id = $1`, [eventId]);
  await tamper(db, `INSERT INTO audit_events (seq, ${columns}) OVERRIDING SYSTEM VALUE SELECT $1::bigint, ${columns} FROM moved_event`, [seq]);
  await db.query('DROP TABLE moved_event');
}

/** The API and the CLI both find the log broken at `firstBrokenId` for `reason`. */
async function assertBroken(
  f: Fixture,
  firstBrokenId: string | null,
  reason: RegExp,
  cliArgs: string[] = [],
  cli: (url: string, ...args: string[]) => Promise<CliResult> = runCli,
): Promise<void> {
  const body = await apiVerify(f);
  assert.equal(body.ok, false, JSON.stringify(body));
  assert.equal(body.firstBrokenId, firstBrokenId, JSON.stringify(body));
  assert.match(body.reason ?? '', reason);
  const run = await cli(f.url, 'audit-verify', ...cliArgs);
  assert.equal(run.code, 1, run.stdout + run.stderr);
  assert.match(run.stdout, /^Audit log: BROKEN$/m);
  if (firstBrokenId) assert.match(run.stdout, new RegExp(`first broken event: ${firstBrokenId}`));
  assert.match(run.stdout, reason);
}

/**
 * The result on the app's own number of workers, on this thread (0 workers), on three workers
 * with the smallest passes, and with one early row allowed (chains out of order deferred).
 */
const everyWay = async (f: Fixture) => {
  const config = f.t.app.get(ConfigService);
  const variants: Array<Record<string, number>> = [
    {},
    { AUDIT_VERIFY_WORKERS: 0 },
    { AUDIT_VERIFY_WORKERS: 3, AUDIT_VERIFY_CHAINS_PER_PASS: 1000 },
    { AUDIT_VERIFY_WORKERS: 2, pendingLimit: 1 },
  ];
  return Promise.all(
    variants.map(async (v) => {
      const verifier = new AuditVerifierService(f.t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN), f.t.app.get(AuditBaseSets), {
        get: (name: string, options?: unknown) => (name in v ? v[name] : config.get(name, options as never)),
      } as unknown as ConfigService<AppConfig, true>);
      // Workers even for this small log (they start only from 100k events otherwise).
      verifier.minEventsForWorkers = 0;
      if (v.pendingLimit !== undefined) verifier.pendingLimit = v.pendingLimit;
      const { ok, checked, firstBrokenId, reason, chains } = await verifier.verify();
      return { ok, checked, firstBrokenId, reason, chains };
    }),
  );
};

describe('audit hash chain (e2e)', () => {
  const opened: TestApp[] = [];
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sessionary-audit-'));
  });
  // Each test's apps close when it ends: a dozen apps left open, each with its pool and its
  // listeners, took PostgreSQL past max_connections in the concurrent test below (CI, once).
  afterEach(async () => {
    while (opened.length) await opened.pop()!.close();
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });
  const open = async (overrides: Record<string, string> = {}, logger?: LoggerService) => {
    const f = await fixture(overrides, logger);
    opened.push(f.t);
    return f;
  };

  it('chains every event per user with contiguous positions, and an intact log verifies ok (API and CLI)', async () => {
    const f = await open();
    const rows = await f.t.db.query(
      `SELECT chain_key, chain_pos::int AS pos, prev_hash, hash, user_id FROM audit_events ORDER BY chain_key, chain_pos`,
    );
    assert.ok(rows.every((r: { hash: string | null }) => r.hash && /^[0-9a-f]{64}$/.test(r.hash)));
    const userRows = rows.filter((r: { chain_key: string }) => r.chain_key === f.user.id);
    assert.deepEqual(
      userRows.map((r: { pos: number }) => r.pos),
      userRows.map((_: unknown, i: number) => i + 1),
    );
    assert.equal(userRows[0].prev_hash, '0'.repeat(64));
    for (let i = 1; i < userRows.length; i++) assert.equal(userRows[i].prev_hash, userRows[i - 1].hash);
    assert.ok(rows.some((r: { chain_key: string; user_id: string | null }) => r.chain_key === 'global' && r.user_id === null));
    const [head] = await f.t.db.query(`SELECT position::int AS position, hash FROM audit_chain_heads WHERE chain_key = $1`, [f.user.id]);
    assert.deepEqual(head, { position: userRows.length, hash: userRows[userRows.length - 1].hash });

    const body = await apiVerify(f);
    assert.deepEqual(body, { ok: true, checked: rows.length, firstBrokenId: null, reason: null });
    const run = await runCliProcess(f.url, 'audit-verify');
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /^Audit log: INTACT$/m);
    assert.match(run.stdout, new RegExp(`events checked: +${rows.length}`));
  });

  it('is refused to a user who is not an admin, and to nobody', async () => {
    const f = await open();
    const tokens = await login(f.t.http, f.user);
    assert.equal((await f.t.http.get('/api/v1/admin/audit/verify').set('Authorization', bearer(tokens))).status, 403);
    assert.equal((await f.t.http.get('/api/v1/admin/audit/verify')).status, 401);
  });

  it('refuses UPDATE and DELETE of events and checkpoints on the connection the service uses, and changes nothing; no unchained event is sealed once the log has a checkpoint', async () => {
    const errors: string[] = [];
    const f = await open({}, { log: () => undefined, warn: () => undefined, error: (m: unknown) => void errors.push(String(m)) });
    const checkpoint = await f.t.app.get(AuditChainService).checkpoint(true);
    assert.ok(checkpoint);
    const target = f.chain[3].id;
    const snapshot = async () => ({
      events: await f.t.db.query(`SELECT * FROM audit_events ORDER BY seq`),
      checkpoints: await f.t.db.query(`SELECT * FROM audit_checkpoints ORDER BY id`),
    });
    const before = await snapshot();
    const refused = async (statement: string, params: unknown[], message: RegExp) => {
      await assert.rejects(f.t.db.query(statement, params), (error: Error & { driverError?: { code?: string } }) => {
        assert.match(error.message, message);
        assert.equal(error.driverError?.code, '42501');
        return true;
      });
    };
    const appendOnly = new RegExp(`audit_events is append-only: (UPDATE|DELETE) of event [0-9a-f-]{36} refused`);
    await refused(`UPDATE audit_events SET ip_address = '198.51.100.66' WHERE id = $1`, [target], appendOnly);
    await refused(`UPDATE audit_events SET type = type WHERE id = $1`, [target], appendOnly);
    await refused(`DELETE FROM audit_events WHERE id = $1`, [target], appendOnly);
    await refused(`DELETE FROM audit_events`, [], appendOnly);
    // In a CTE, as SQL injection into a single statement could carry it.
    await refused(`WITH gone AS (DELETE FROM audit_events WHERE id = $1 RETURNING id) SELECT count(*) FROM gone`, [target], appendOnly);
    // On a partition directly: each has the trigger too.
    const [{ partition }] = await f.t.db.query(`SELECT tableoid::regclass::text AS partition FROM audit_events WHERE id = $1`, [target]);
    assert.notEqual(partition, 'audit_events');
    await refused(`DELETE FROM ${partition} WHERE id = $1`, [target], appendOnly);
    const checkpointsAppendOnly = /audit_checkpoints is append-only: (UPDATE|DELETE) of checkpoint \d+ refused/;
    await refused(`UPDATE audit_checkpoints SET events = events + 1`, [], checkpointsAppendOnly);
    await refused(`DELETE FROM audit_checkpoints`, [], checkpointsAppendOnly);
    // TRUNCATE fires no row trigger: a statement trigger of its own on each table and month (0.20.3).
    await refused(`TRUNCATE audit_events`, [], /audit_events is append-only: TRUNCATE refused/);
    await refused(`TRUNCATE ${partition}`, [], new RegExp(`${partition.replace(/"/g, '')} is append-only: TRUNCATE refused`));
    await refused(`TRUNCATE audit_checkpoints`, [], /audit_checkpoints is append-only: TRUNCATE refused/);
    // The seal's bound (events up to it are sealed at boot) cannot be put back, not even in the
    // CTE of an injected statement beside a forged event: the next boot sealed that event (0.23.0).
    await refused(
      `WITH bound AS (INSERT INTO audit_chain_seal VALUES (9000000000000000000)) INSERT INTO audit_events (type, user_id, metadata) VALUES ('LOGIN', $1, '{}')`,
      [f.user.id],
      /audit_chain_seal only empties: INSERT refused/,
    );
    await tamper(f.t.db, `INSERT INTO audit_chain_seal VALUES (0)`);
    await refused(`UPDATE audit_chain_seal SET up_to_seq = 9000000000000000000`, [], /audit_chain_seal only empties: UPDATE refused/);
    await f.t.db.query(`DELETE FROM audit_chain_seal`); // what the sealer does once done
    assert.deepEqual(await snapshot(), before);

    // An event written without the chain: changing any of its own fields is refused (only the
    // sealer's UPDATE, which adds the chain fields, passes).
    const [forged] = await f.t.db.query(`INSERT INTO audit_events (type, user_id, metadata) VALUES ('LOGIN', $1, '{}') RETURNING id`, [f.user.id]);
    await refused(`UPDATE audit_events SET ip_address = '198.51.100.66' WHERE id = $1`, [forged.id], appendOnly);
    await refused(
      `UPDATE audit_events SET chain_key = 'x', chain_pos = 1, prev_hash = $2, hash = $2, created_at = created_at - interval '1 second' WHERE id = $1`,
      [forged.id, '0'.repeat(64)],
      appendOnly,
    );
    // A sealing bound put back past the table's trigger (its owner can: ALTER TABLE ... DISABLE
    // TRIGGER). The log has a checkpoint, so whatever came before the chain was sealed before
    // it: the event is not sealed, by the service nor by a command (the CLI's verification below
    // boots the application too). Until 0.24.1 the next boot gave it a valid HMAC, and the log
    // verified as intact.
    await tamper(f.t.db, `INSERT INTO audit_chain_seal SELECT max(seq) FROM audit_events`);
    assert.equal(await f.t.app.get(AuditChainService).sealPending(), 0);
    assert.deepEqual(errors, [
      '1 audit event(s) without the chain lie under a sealing bound, in a log that has checkpoints: not sealed. The events of before the chain were ' +
        'sealed before the first checkpoint, so these were written into the tables outside the service; npm run cli -- audit-verify names the first',
    ]);
    await assertBroken(f, forged.id, /is not in any chain: it was inserted outside the service/);
    const [unsealed] = await f.t.db.query(`SELECT hash FROM audit_events WHERE id = $1`, [forged.id]);
    assert.equal(unsealed.hash, null);
    assert.equal((await f.t.db.query('SELECT count(*)::int AS n FROM audit_chain_seal'))[0].n, 1, 'the bound stays, as evidence');
  });

  it('refuses to start, or to run a command, with another AUDIT_HMAC_KEY than the log was written with, and writes nothing', async () => {
    const f = await open();
    assert.ok(await f.t.app.get(AuditChainService).checkpoint(true));
    const otherKey = 'another-audit-hmac-key-0123456789-abcdefghijklmnop';
    const wrongKey = /AUDIT_HMAC_KEY is not the key this audit log was written with, or checkpoint 1, the oldest .*, was altered/;
    const events = async () => (await f.t.db.query(`SELECT count(*)::int AS n FROM audit_events`))[0].n;
    const before = await events();
    await assert.rejects(
      createTestApp({
        DATABASE_URL: f.url,
        JWT_SECRET: f.t.config.JWT_SECRET,
        PASSWORD_PEPPER: f.t.config.PASSWORD_PEPPER,
        AUDIT_HMAC_KEY: otherKey,
      }),
      wrongKey,
    );
    // A command that could not run: exit code 3 (1 until 0.24.1, which audit-verify also gives a broken log).
    const command = await runCliWith({ AUDIT_HMAC_KEY: otherKey }, f.url, 'promote-admin', f.other.email);
    assert.equal(command.code, 3, command.stderr);
    assert.match(command.stderr, wrongKey);
    assert.match(command.stderr, /^promote-admin: could not run \(exit code 3\)/m);
    const notVerified = await runCliWith({ AUDIT_HMAC_KEY: otherKey }, f.url, 'audit-verify');
    assert.equal(notVerified.code, 3, notVerified.stdout + notVerified.stderr);
    assert.match(notVerified.stderr, wrongKey);
    assert.match(notVerified.stderr, /^audit-verify: NOT VERIFIED \(exit code 3\): the verification could not be done/m);
    assert.equal(notVerified.stdout, '', 'no report: nothing was verified');
    assert.equal(await events(), before, 'no event written with the other key');
    assert.equal((await f.t.db.query(`SELECT role FROM users WHERE id = $1`, [f.other.id]))[0].role, 'user');
    // AUDIT_HMAC_KEY_CHECK=false: the verification runs, and says what the other key makes of the log.
    const verified = await runCliWith({ AUDIT_HMAC_KEY: otherKey, AUDIT_HMAC_KEY_CHECK: 'false' }, f.url, 'audit-verify');
    assert.equal(verified.code, 1, verified.stdout + verified.stderr);
    assert.match(verified.stdout, /does not match its hash: it was altered/);
    // A checkpoint added after the newest (DML can insert one) is the verifier's to report, and keeps nothing from starting.
    await f.t.db.query(
      `INSERT INTO audit_checkpoints (id, created_at, chains, events, max_seq, digest, prev_mac, mac)
       SELECT id + 1, now(), chains, events, max_seq, digest, mac, repeat('0', 64) FROM audit_checkpoints ORDER BY id DESC LIMIT 1`,
    );
    const listed = await runCli(f.url, 'keys', 'list');
    assert.equal(listed.code, 0, listed.stderr);
    assert.match((await apiVerify(f)).reason ?? '', /Checkpoint 2 does not match its MAC/);
  });

  it('exits 3 (not verified), never 1 (broken), when the verification cannot be done: a database that is not there', async () => {
    const missing = new URL(process.env.DATABASE_URL!);
    missing.pathname = '/sessionary_no_such_database';
    // As its own process: the exit code is the process's.
    const run = await runCliProcess(missing.toString(), 'audit-verify');
    assert.equal(run.code, 3, run.stdout + run.stderr);
    assert.match(run.stderr, /sessionary_no_such_database/);
    assert.match(
      run.stderr,
      /audit-verify: NOT VERIFIED \(exit code 3\): the verification could not be done .*This is no finding about the audit log/,
    );
    assert.equal(run.stdout, '');
  });

  it('detects a changed field and names the event', async () => {
    const f = await open();
    const target = f.chain[3].id;
    await tamper(f.t.db, `UPDATE audit_events SET ip_address = '198.51.100.66' WHERE id = $1`, [target]);
    await assertBroken(f, target, /does not match its hash: it was altered/, [], runCliProcess); // exit code 1 from the process itself
  });

  it('detects a changed timestamp, even by one microsecond', async () => {
    const f = await open();
    const target = f.chain[2].id;
    await tamper(f.t.db, `UPDATE audit_events SET created_at = created_at + interval '1 microsecond' WHERE id = $1`, [target]);
    const body = await apiVerify(f);
    assert.equal(body.ok, false);
    assert.equal(body.firstBrokenId, target);
  });

  it('detects a deleted middle event and names the event after the gap', async () => {
    const f = await open();
    await tamper(f.t.db, `DELETE FROM audit_events WHERE id = $1`, [f.chain[2].id]);
    await assertBroken(f, f.chain[3].id, /position 4 .* where 3 was expected: events before it were deleted/);
  });

  it('detects an inserted event (positions shifted to make room) and names it', async () => {
    const f = await open();
    const [victim] = await f.t.db.query(`SELECT * FROM audit_events WHERE id = $1`, [f.chain[2].id]);
    // Two steps, because the unique (chain_key, chain_pos) index is checked row by row.
    await tamper(f.t.db, `UPDATE audit_events SET chain_pos = chain_pos + 1000000 WHERE chain_key = $1 AND chain_pos >= 3`, [f.user.id]);
    await tamper(f.t.db, `UPDATE audit_events SET chain_pos = chain_pos - 999999 WHERE chain_key = $1 AND chain_pos >= 1000000`, [f.user.id]);
    const [forged] = await f.t.db.query(
      `INSERT INTO audit_events (type, user_id, session_id, ip_address, user_agent, metadata, created_at, chain_key, chain_pos, prev_hash, hash)
       VALUES ('LOGOUT', $1::uuid, $2, '203.0.113.9', 'forger', '{}', $3, $1::text, 3, $4, $5) RETURNING id`,
      [f.user.id, victim.session_id, victim.created_at, f.chain[1].hash, randomBytes(32).toString('hex')],
    );
    await f.t.db.query(`UPDATE audit_chain_heads SET position = position + 1 WHERE chain_key = $1`, [f.user.id]);
    await assertBroken(f, forged.id, /does not match its hash/);
  });

  it('detects an event inserted outside the chain, and never seals it (neither at boot nor later)', async () => {
    const f = await open();
    const [forged] = await f.t.db.query(`INSERT INTO audit_events (type, user_id) VALUES ('LOGIN', $1) RETURNING id`, [f.user.id]);
    // The CLI boots the app (which seals what the migration left) and still finds it.
    await assertBroken(f, forged.id, /is not in any chain/);
    assert.equal(await f.t.app.get(AuditChainService).sealPending(), 0);
    await assertBroken(f, forged.id, /is not in any chain/);
  });

  it('detects that the constraint keeping every event in a chain or none was dropped, which would let an event with a hash and no chain go unseen', async () => {
    const f = await open();
    await f.t.db.query(`ALTER TABLE audit_events DROP CONSTRAINT "CHK_audit_events_chain"`);
    await f.t.db.query(`INSERT INTO audit_events (type, user_id, hash) VALUES ('LOGIN', $1, $2)`, [f.user.id, 'f'.repeat(64)]);
    const body = await apiVerify(f);
    assert.equal(body.ok, false);
    assert.match(body.reason!, /The constraint CHK_audit_events_chain .* is missing, altered or not validated/);
    // Put back NOT VALID, over that row, it is still no guarantee.
    await f.t.db.query(
      `ALTER TABLE audit_events ADD CONSTRAINT "CHK_audit_events_chain" CHECK (
        ("chain_key" IS NULL AND "chain_pos" IS NULL AND "prev_hash" IS NULL AND "hash" IS NULL) OR
        ("chain_key" IS NOT NULL AND "chain_pos" IS NOT NULL AND "prev_hash" IS NOT NULL AND "hash" IS NOT NULL)) NOT VALID`,
    );
    assert.match((await apiVerify(f)).reason!, /is missing, altered or not validated/);
    // A constraint of that name that allows anything, validated: no guarantee either.
    await f.t.db.query(`ALTER TABLE audit_events DROP CONSTRAINT "CHK_audit_events_chain"`);
    await f.t.db.query(`ALTER TABLE audit_events ADD CONSTRAINT "CHK_audit_events_chain" CHECK (hash IS NOT NULL OR chain_key IS NULL)`);
    assert.match((await apiVerify(f)).reason!, /is missing, altered or not validated/);
  });

  it('detects a reordered pair and names the first of them in chain order', async () => {
    const f = await open();
    const [a, b] = [f.chain[2].id, f.chain[3].id];
    await tamper(f.t.db, `UPDATE audit_events SET chain_pos = 1000000 WHERE id = $1`, [a]);
    await tamper(f.t.db, `UPDATE audit_events SET chain_pos = 3 WHERE id = $1`, [b]);
    await tamper(f.t.db, `UPDATE audit_events SET chain_pos = 4 WHERE id = $1`, [a]);
    await assertBroken(f, b, /does not link to the event before it/);
  });

  it('says a seq sequence set back (a restore, an upgrade by logical replication) with the events it leaves out of their place; a copy never written to is intact', async () => {
    const f = await open();
    assert.ok(await f.t.app.get(AuditChainService).checkpoint(true));
    const [{ name }] = await f.t.db.query(`SELECT pg_get_serial_sequence('audit_events', 'seq') AS name`);
    await f.t.db.query(`SELECT setval($1, 1)`, [name]);
    // Nothing written since: the log is intact (a logical replica's copy, say).
    assert.equal((await apiVerify(f)).ok, true);
    // An event written meanwhile has a seq from below: named, with the sequence as its likely cause.
    await login(f.t.http, f.user);
    const [newest] = await f.t.db.query(`SELECT id, seq::text FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos DESC LIMIT 1`, [f.user.id]);
    assert.equal(newest.seq, '2');
    const body = await apiVerify(f);
    assert.equal(body.firstBrokenId, newest.id, JSON.stringify(body));
    assert.match(
      body.reason!,
      /it was inserted again out of its place in the log, or written while the seq sequence was behind: the sequence of the events' seqs has handed out 2, less than the greatest seq in the log \(\d+\): it was set back/,
    );
    // The CLI's own start moves the sequence past the log (as every process's does): that event
    // keeps its seq, and is named alone (documented).
    const run = await runCli(f.url, 'audit-verify');
    assert.equal(run.code, 1, run.stdout + run.stderr);
    assert.match(run.stdout, new RegExp(`first broken event: ${newest.id}`));
    assert.match(run.stdout, /it was inserted again out of its place in the log/);
    assert.doesNotMatch(run.stdout, /sequence was behind/);
    const [{ caughtUp }] = await f.t.db.query(`SELECT last_value >= (SELECT max(seq) FROM audit_events) AS "caughtUp" FROM ${name}`);
    assert.equal(caughtUp, true);
    // Set past the checkpoint's seq before the service writes: nothing is found.
    const g = await open();
    const checkpoint = await g.t.app.get(AuditChainService).checkpoint(true);
    assert.ok(checkpoint);
    const [{ name: gName }] = await g.t.db.query(`SELECT pg_get_serial_sequence('audit_events', 'seq') AS name`);
    await g.t.db.query(`SELECT setval($1, 1)`, [gName]);
    await g.t.db.query(`SELECT setval($1, $2::bigint)`, [gName, checkpoint.maxSeq]);
    await login(g.t.http, g.user);
    assert.equal((await apiVerify(g)).ok, true);
  });

  it('moves a seq sequence set back past the log and its latest checkpoint at boot, before anything is written', async () => {
    const f = await open();
    const checkpoint = await f.t.app.get(AuditChainService).checkpoint(true);
    assert.ok(checkpoint);
    const [{ name }] = await f.t.db.query(`SELECT pg_get_serial_sequence('audit_events', 'seq') AS name`);
    await f.t.db.query(`SELECT setval($1, 1)`, [name]);
    // A restore, then the service starts on it.
    const logger = new CapturingLogger();
    const restarted = await createTestApp({ DATABASE_URL: f.url }, { logger });
    opened.push(restarted);
    const [{ handed, greatest }] = await f.t.db.query(
      `SELECT (SELECT last_value FROM ${name})::text AS handed, (SELECT max(seq) FROM audit_events)::text AS greatest`,
    );
    assert.ok(BigInt(handed) >= BigInt(greatest) && BigInt(handed) >= BigInt(checkpoint.maxSeq), `${handed} ${greatest} ${checkpoint.maxSeq}`);
    assert.ok(
      logger.lines.some((l) => l.level === 'warn' && /seq sequence had handed out 1, less than the log holds .* Moved past/.test(l.message)),
      JSON.stringify(logger.lines.filter((l) => l.level === 'warn')),
    );
    await login(restarted.http, f.user);
    assert.equal((await apiVerify(f)).ok, true);
    // A sequence ahead of the log is left as it is, and says nothing.
    const [{ before }] = await f.t.db.query(`SELECT last_value::text AS before FROM ${name}`);
    const quiet = new CapturingLogger();
    opened.push(await createTestApp({ DATABASE_URL: f.url }, { logger: quiet }));
    const [{ after }] = await f.t.db.query(`SELECT last_value::text AS after FROM ${name}`);
    assert.equal(after, before);
    assert.ok(!quiet.lines.some((l) => /seq sequence/.test(l.message)));
    // A checkpoint that is not authentic (a forged row stating a seq near the sequence's end) is
    // not followed: the sequence goes past the log alone.
    await f.t.db.query(
      `INSERT INTO audit_checkpoints (id, created_at, chains, events, max_seq, digest, prev_mac, mac)
       SELECT id + 1, now(), chains, events, 9000000000000000000, digest, mac, repeat('0', 64) FROM audit_checkpoints ORDER BY id DESC LIMIT 1`,
    );
    await f.t.db.query(`SELECT setval($1, 1)`, [name]);
    opened.push(await createTestApp({ DATABASE_URL: f.url }));
    const [{ last, top }] = await f.t.db.query(`SELECT last_value::text AS last, (SELECT max(seq)::text FROM audit_events) AS top FROM ${name}`);
    assert.equal(last, top);
  });

  it('detects a metadata number altered to one that JSON.parse reads as the same (5 to 5.0000000000000001, null to 1e400)', async () => {
    const f = await open();
    const record = (metadata: AuditMetadata) =>
      f.t.db.transaction((em) => f.t.app.get(AuditService).record(em, { type: 'PROFILE_UPDATED', userId: f.other.id, metadata }));
    await record({ attempts: 5, ratio: 0.1, big: 1e21, tiny: 1e-7 });
    await record({ previous: null });
    const events = await f.t.db.query(
      `SELECT id, metadata::text AS text FROM audit_events WHERE chain_key = $1 AND type = 'PROFILE_UPDATED' ORDER BY chain_pos`,
      [f.other.id],
    );
    assert.equal(events.length, 2);
    // The numbers the service writes verify, as jsonb prints them.
    assert.match(events[0].text, /"big": 1000000000000000000000/);
    assert.equal((await apiVerify(f)).ok, true);
    await tamper(f.t.db, `UPDATE audit_events SET metadata = jsonb_set(metadata, '{previous}', $2::jsonb) WHERE id = $1`, [
      events[1].id,
      `1${'0'.repeat(400)}`,
    ]);
    await tamper(f.t.db, `UPDATE audit_events SET metadata = jsonb_set(metadata, '{attempts}', '5.0000000000000001') WHERE id = $1`, [events[0].id]);
    // What JavaScript reads (TypeORM, the API, exports) is unchanged; the stored numbers are not.
    const [read] = await f.t.db.query(`SELECT metadata FROM audit_events WHERE id = $1`, [events[0].id]);
    assert.equal(read.metadata.attempts, 5);
    await assertBroken(f, events[0].id, /does not match its hash: it was altered/);
    await tamper(f.t.db, `UPDATE audit_events SET metadata = jsonb_set(metadata, '{attempts}', '5') WHERE id = $1`, [events[0].id]);
    await assertBroken(f, events[1].id, /does not match its hash: it was altered/);
  });

  it('detects swapped contents of two events (same positions)', async () => {
    const f = await open();
    const [a, b] = [f.chain[4].id, f.chain[5].id];
    await tamper(
      f.t.db,
      `UPDATE audit_events x SET type = y.type, session_id = y.session_id, ip_address = y.ip_address, user_agent = y.user_agent,
              metadata = y.metadata, created_at = y.created_at
         FROM audit_events y WHERE (x.id, y.id) IN (($1::uuid, $2::uuid), ($2::uuid, $1::uuid))`,
      [a, b],
    );
    const differ = await f.t.db.query(
      `SELECT count(DISTINCT (type, session_id, user_agent, created_at))::int AS n FROM audit_events WHERE id IN ($1, $2)`,
      [a, b],
    );
    assert.equal(differ[0].n, 2);
    await assertBroken(f, a, /does not match its hash/);
  });

  it('detects an event inserted again, unchanged, with a seq from below its place (which checkpoints, shipping and exports go by)', async () => {
    const f = await open();
    const gap = await unusedSeq(f.t.db);
    // The user's chain goes on past that seq, by two events: the newest moves below the one before it.
    await login(f.t.http, f.user);
    await login(f.t.http, f.user);
    const [newest] = await f.t.db.query(`SELECT id, seq::text FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos DESC LIMIT 2`, [f.user.id]);
    await insertAgainWithSeq(f.t.db, newest.id, gap);
    await assertBroken(
      f,
      newest.id,
      new RegExp(`Event ${newest.id} has seq ${gap}, not after seq \\d+ of the event before it in chain ${f.user.id}: it was inserted again`),
    );
  });

  it("detects an event past its chain's checkpointed head, inserted again with a seq the checkpoint covers (which no later checkpoint or shipping would find)", async () => {
    const f = await open();
    // A seq no event holds (a rolled-back write), then events of another user past it, and a
    // checkpoint covering them: the user's chain is recorded at its head, before the seq.
    const gap = await unusedSeq(f.t.db);
    await login(f.t.http, f.other);
    const checkpoint = await f.t.app.get(AuditChainService).checkpoint(true);
    assert.ok(checkpoint && BigInt(checkpoint.maxSeq) > BigInt(gap), JSON.stringify(checkpoint));
    const [{ position: checkpointedOther }] = await f.t.db.query(`SELECT position FROM audit_checkpoint_heads WHERE chain_key = $1`, [f.other.id]);
    // The user's next event comes after the checkpoint, and moves to the seq below it: its seq
    // still rises in its chain, but the next checkpoint (by seqs past this one's) would not see the chain move.
    await login(f.t.http, f.user);
    const [newest] = await f.t.db.query(
      `SELECT id, chain_pos::int AS chain_pos FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos DESC LIMIT 1`,
      [f.user.id],
    );
    await insertAgainWithSeq(f.t.db, newest.id, gap);
    await assertBroken(
      f,
      newest.id,
      new RegExp(
        `Event ${newest.id} has seq ${gap}, which the latest checkpoint covers \\(through seq ${checkpoint.maxSeq}\\), but is past position ` +
          `${newest.chain_pos - 1} that checkpoint recorded of chain ${f.user.id}: it was inserted again`,
      ),
    );
    // The same on worker threads (the checkpoint's seq goes with each pass).
    for (const r of await everyWay(f)) {
      assert.equal(r.firstBrokenId, newest.id, JSON.stringify(r));
      assert.match(r.reason!, /which the latest checkpoint covers/);
    }
    // The chain moves on (anyone can add a LOGIN_FAILED to it): the next checkpoint does not
    // record it past the event (until 0.26.0 it did, and the log verified as intact again).
    await login(f.t.http, f.user);
    assert.equal((await f.t.http.post('/api/v1/auth/login').send({ email: f.user.email, password: 'wrong-password-123' })).status, 401);
    await login(f.t.http, f.other);
    const [{ head }] = await f.t.db.query(`SELECT position::int AS head FROM audit_chain_heads WHERE chain_key = $1`, [f.user.id]);
    assert.equal(head, newest.chain_pos + 2);
    const next = await f.t.app.get(AuditChainService).checkpoint(true);
    assert.ok(next && BigInt(next.maxSeq) > BigInt(checkpoint.maxSeq));
    const [recorded] = await f.t.db.query(`SELECT position::int AS position FROM audit_checkpoint_heads WHERE chain_key = $1`, [f.user.id]);
    assert.equal(recorded.position, newest.chain_pos - 1);
    await assertBroken(f, newest.id, new RegExp(`Event ${newest.id} has seq ${gap}, which the latest checkpoint covers`));
    // Another user's chain, moved meanwhile, was recorded as usual.
    const [{ recordedOther, headOther }] = await f.t.db.query(
      `SELECT c.position::int AS "recordedOther", h.position::int AS "headOther" FROM audit_checkpoint_heads c JOIN audit_chain_heads h USING (chain_key)
        WHERE chain_key = $1`,
      [f.other.id],
    );
    assert.equal(recordedOther, headOther);
    assert.ok(headOther > Number(checkpointedOther), `${headOther} after ${checkpointedOther}`);
    // Nor when the seq is made to jump (setval), which sends the next checkpoint to compare every head.
    const [{ name }] = await f.t.db.query(`SELECT pg_get_serial_sequence('audit_events', 'seq') AS name`);
    await f.t.db.query(`SELECT setval($1, (SELECT max(seq) FROM audit_events) + 500000)`, [name]);
    await login(f.t.http, f.user);
    await login(f.t.http, f.other);
    assert.ok(await f.t.app.get(AuditChainService).checkpoint(true));
    const [again] = await f.t.db.query(`SELECT position::int AS position FROM audit_checkpoint_heads WHERE chain_key = $1`, [f.user.id]);
    assert.equal(again.position, newest.chain_pos - 1);
    const [{ otherAgain, otherHead }] = await f.t.db.query(
      `SELECT c.position::int AS "otherAgain", h.position::int AS "otherHead" FROM audit_checkpoint_heads c JOIN audit_chain_heads h USING (chain_key)
        WHERE chain_key = $1`,
      [f.other.id],
    );
    assert.ok(otherHead > headOther);
    assert.equal(otherAgain, otherHead, 'another chain that moved is recorded as usual');
    await assertBroken(f, newest.id, new RegExp(`Event ${newest.id} has seq ${gap}, which the latest checkpoint covers`));
  });

  it('detects an event moved to another user', async () => {
    const f = await open();
    const target = f.chain[4].id;
    await tamper(f.t.db, `UPDATE audit_events SET user_id = $2 WHERE id = $1`, [target, f.other.id]);
    await assertBroken(f, target, /was moved to another user/);
  });

  it('detects an event moved to another user together with its chain key', async () => {
    const f = await open();
    const target = f.chain[f.chain.length - 1].id;
    const [{ n }] = await f.t.db.query(`SELECT count(*)::int AS n FROM audit_events WHERE chain_key = $1`, [f.other.id]);
    await tamper(f.t.db, `UPDATE audit_events SET user_id = $2::uuid, chain_key = $2::text, chain_pos = $3 WHERE id = $1`, [
      target,
      f.other.id,
      n + 1,
    ]);
    // The user's chain (its key sorts first or second): either its head no longer matches, or
    // the other chain holds an event that was not hashed there.
    const body = await apiVerify(f);
    assert.equal(body.ok, false);
    assert.ok(body.firstBrokenId === target || body.firstBrokenId === null, JSON.stringify(body));
  });

  /**
   * Ends every session of `user` and `other` by the cleanup (one lane of one), with deadlines
   * that make the two users' SESSION_EXPIRED events alternate in the lane's chain: user, other,
   * user, user. Returns them in chain order.
   */
  const endByCleanup = async (f: Fixture): Promise<Array<{ id: string; user_id: string; chain_key: string; chain_pos: number }>> => {
    await f.t.db.query(
      `UPDATE sessions s SET idle_expires_at = now() - interval '1 hour' + o.n * interval '1 second'
         FROM (SELECT id, 2 * row_number() OVER (PARTITION BY user_id ORDER BY created_at) + (user_id = $2)::int AS n
                 FROM sessions WHERE user_id IN ($1, $2) AND ended_at IS NULL) o
        WHERE s.id = o.id`,
      [f.user.id, f.other.id],
    );
    const ended = await f.t.app.get(SessionMaintenanceService).endExpiredSessions(250, { index: 0, of: 1 });
    assert.equal(ended, 4);
    const events = await f.t.db.query(
      `SELECT id, user_id, chain_key, chain_pos::int AS chain_pos FROM audit_events WHERE type = 'SESSION_EXPIRED' ORDER BY chain_key, chain_pos`,
    );
    assert.deepEqual(
      events.map((e: { user_id: string }) => e.user_id),
      [f.user.id, f.other.id, f.user.id, f.user.id],
    );
    return events;
  };

  it("chains the cleanup's SESSION_EXPIRED events in its lane's own chain, whichever users they name, and moves no user's head; the log verifies", async () => {
    const f = await open();
    const usersHeads = `SELECT chain_key, position::int AS position, hash FROM audit_chain_heads WHERE chain_key IN ($1, $2) ORDER BY chain_key`;
    const headsBefore = await f.t.db.query(usersHeads, [f.user.id, f.other.id]);
    const events = await endByCleanup(f);
    assert.deepEqual(
      events.map((e) => [e.chain_key, e.chain_pos]),
      [1, 2, 3, 4].map((at) => [cleanupChainKey(0), at]),
    );
    assert.deepEqual(await f.t.db.query(usersHeads, [f.user.id, f.other.id]), headsBefore);
    const [lane] = await f.t.db.query(`SELECT position::int AS position FROM audit_chain_heads WHERE chain_key = $1`, [cleanupChainKey(0)]);
    assert.equal(lane.position, 4);
    // The lane's next batch appends to the head this instance remembers: one statement, no lock first.
    const tokens = await login(f.t.http, f.user);
    await f.t.db.query(`UPDATE sessions SET idle_expires_at = now() - interval '1 minute' WHERE id = $1`, [tokens.sessionId]);
    const spy = recordQueryRunners(f.t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN));
    try {
      assert.equal(await f.t.app.get(SessionMaintenanceService).endExpiredSessions(250, { index: 0, of: 1 }), 1);
    } finally {
      spy.restore();
    }
    const chainStatements = spy.runners
      .flat()
      .map(textOf)
      .filter((s) => /audit_chain_heads/.test(s));
    assert.equal(chainStatements.length, 1, chainStatements.join('\n---\n'));
    assert.match(chainStatements[0], /WITH moved AS/);
    const [next] = await f.t.db.query(
      `SELECT chain_key, chain_pos::int AS chain_pos FROM audit_events WHERE session_id = $1 AND type = 'SESSION_EXPIRED'`,
      [tokens.sessionId],
    );
    assert.deepEqual(next, { chain_key: cleanupChainKey(0), chain_pos: 5 });
    const [{ n }] = await f.t.db.query(`SELECT count(*)::int AS n FROM audit_events`);
    assert.deepEqual(await apiVerify(f), { ok: true, checked: n, firstBrokenId: null, reason: null });
    for (const r of await everyWay(f)) assert.equal(r.ok, true, r.reason ?? '');
  });

  it("detects a cleanup event given to another user (by its hash: a lane's chain holds many users' events) and one deleted from the lane's chain", async () => {
    const f = await open();
    const events = await endByCleanup(f);
    await tamper(f.t.db, `UPDATE audit_events SET user_id = $2 WHERE id = $1`, [events[2].id, f.other.id]);
    await assertBroken(f, events[2].id, /does not match its hash: it was altered/);
    for (const r of await everyWay(f)) assert.equal(r.firstBrokenId, events[2].id);
    await tamper(f.t.db, `UPDATE audit_events SET user_id = $2 WHERE id = $1`, [events[2].id, f.user.id]);
    assert.equal((await apiVerify(f)).ok, true);
    await tamper(f.t.db, `DELETE FROM audit_events WHERE id = $1`, [events[1].id]);
    await assertBroken(f, events[2].id, /position 3 of chain cleanup:0, where 2 was expected/);
  });

  it("exports a user's events with the lanes' events of that user alone: the file verifies (gaps in a lane are other users' events), a deleted line of the user's own chain still fails it", async () => {
    const f = await open();
    const events = await endByCleanup(f);
    const file = join(dir, `user-${f.user.id}.ndjson`);
    const exported = await runCli(f.url, 'audit-export', '--user-id', f.user.id, '--out', file);
    assert.equal(exported.code, 0, exported.stdout + exported.stderr);
    const text = readFileSync(file, 'utf8');
    const lines = text
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { id?: string; chainKey?: string; position?: number });
    assert.deepEqual(
      lines.filter((l) => l.chainKey === cleanupChainKey(0)).map((l) => l.position),
      [1, 3, 4],
    );
    const run = await runCli(f.url, 'audit-verify', '--file', file);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /^Audit export: INTACT$/m);
    assert.match(run.stdout, /authenticated alone: +1 /);
    assert.deepEqual(
      lines.filter((l) => l.chainKey === cleanupChainKey(0)).map((l) => l.id),
      events.filter((e) => e.user_id === f.user.id).map((e) => e.id),
    );
    // The user's own chain is whole in it: a line taken out of it (and the seal left as it was) is named by the gap.
    const own = lines.flatMap((l, i) => (l.chainKey === f.user.id ? [i] : []));
    const cut = lines.filter((_, i) => i !== own[2]);
    const cutFile = join(dir, `user-cut-${f.user.id}.ndjson`);
    writeFileSync(cutFile, cut.map((l) => `${JSON.stringify(l)}\n`).join(''));
    const broken = await runCli(f.url, 'audit-verify', '--file', cutFile);
    assert.equal(broken.code, 1, broken.stdout + broken.stderr);
    assert.match(broken.stdout, new RegExp(`first broken line: +${own[2] + 1} \\(event ${lines[own[3]].id}\\)`));
    assert.match(broken.stdout, /this export holds whole chains: lines between them were deleted/);
  });

  it('detects a whole chain deleted, its head included, by the checkpoint that recorded it', async () => {
    const f = await open();
    assert.ok(await f.t.app.get(AuditChainService).checkpoint(true));
    await tamper(f.t.db, `DELETE FROM audit_events WHERE chain_key = $1`, [f.other.id]);
    await f.t.db.query(`DELETE FROM audit_chain_heads WHERE chain_key = $1`, [f.other.id]);
    await assertBroken(
      f,
      null,
      new RegExp(`Chain ${f.other.id} has no head, but a checkpoint recorded it at position \\d+: its head and events were deleted`),
    );
  });

  it('detects a whole chain deleted and its head set back to the start, by the checkpoint that recorded it', async () => {
    const f = await open();
    assert.ok(await f.t.app.get(AuditChainService).checkpoint(true));
    await tamper(f.t.db, `DELETE FROM audit_events WHERE chain_key = $1`, [f.other.id]);
    // The head as a chain without events has it: consistent with the (now empty) chain.
    await f.t.db.query(`UPDATE audit_chain_heads SET position = 0, hash = $2 WHERE chain_key = $1`, [f.other.id, GENESIS_HASH]);
    await assertBroken(f, null, new RegExp(`Chain ${f.other.id} has no events, but a checkpoint recorded position \\d+: its events were deleted`));
  });

  it("keeps a deleted user's events as they were: the log still verifies", async () => {
    const f = await open();
    const before = await f.t.db.query(`SELECT id, user_id, hash FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos`, [f.other.id]);
    assert.ok(before.length >= 2);
    // Nothing in the service deletes users; an operator may. The events must not change with it.
    await f.t.db.query(`DELETE FROM users WHERE id = $1`, [f.other.id]);
    const afterwards = await f.t.db.query(`SELECT id, user_id, hash FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos`, [f.other.id]);
    assert.deepEqual(afterwards, before);
    const body = await apiVerify(f);
    assert.equal(body.ok, true, JSON.stringify(body));
  });

  it('writes a keyed checkpoint to the table, the log and the file, and detects a deleted tail with it', async () => {
    const file = join(dir, 'checkpoints.ndjson');
    const logged: unknown[] = [];
    const logger: LoggerService = { log: (m: unknown) => void logged.push(m), warn: () => undefined, error: () => undefined };
    const f = await open({ AUDIT_CHECKPOINT_FILE: file }, logger);
    const chainService = f.t.app.get(AuditChainService);
    const checkpoint = await chainService.checkpoint(true);
    assert.ok(checkpoint);
    const [{ events }] = await f.t.db.query(`SELECT count(*)::int AS events FROM audit_events`);
    assert.equal(checkpoint.events, events);
    assert.equal(checkpoint.id, 1);
    // Exported outside the database: the file's last line and one structured log line.
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    assert.deepEqual(JSON.parse(lines[lines.length - 1]), checkpoint);
    assert.ok(
      logged.some(
        (m) =>
          typeof m === 'object' &&
          m !== null &&
          (m as { event?: string; mac?: string }).event === 'audit.checkpoint' &&
          (m as { mac: string }).mac === checkpoint.mac,
      ),
    );
    // Nothing new: no checkpoint.
    assert.equal(await chainService.checkpoint(true), undefined);
    const ok = await runCli(f.url, 'audit-verify', '--checkpoint-file', file);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /last line: checkpoint 1/);

    // The attacker deletes the user's last two events and sets the head back to the new last one.
    const tail = f.chain.slice(-2).map((e) => e.id);
    const keep = f.chain[f.chain.length - 3];
    await tamper(f.t.db, `DELETE FROM audit_events WHERE id = ANY($1::uuid[])`, [tail]);
    await f.t.db.query(`UPDATE audit_chain_heads SET position = position - 2, hash = $2 WHERE chain_key = $1`, [f.user.id, keep.hash]);
    // The checkpoint in the table sees it.
    await assertBroken(
      f,
      null,
      new RegExp(`Chain ${f.user.id} ends at position ${f.chain.length - 2}, but a checkpoint recorded position ${f.chain.length}`),
    );

    // And deletes the checkpoints and the heads' checkpoint record too: the database alone no longer tells...
    await tamper(f.t.db, `DELETE FROM audit_checkpoints`);
    await f.t.db.query(`DELETE FROM audit_checkpoint_heads`);
    assert.equal((await apiVerify(f)).ok, true);
    // ...but the exported checkpoint does.
    const run = await runCli(f.url, 'audit-verify', '--checkpoint-file', file);
    assert.equal(run.code, 1, run.stdout + run.stderr);
    assert.match(run.stdout, /Checkpoint 1 from the file is missing from the table/);
  });

  it('detects a forged line in the checkpoint file', async () => {
    const file = join(dir, 'forged.ndjson');
    const f = await open({ AUDIT_CHECKPOINT_FILE: file });
    const checkpoint = await f.t.app.get(AuditChainService).checkpoint(true);
    assert.ok(checkpoint);
    const forged = join(dir, 'forged-2.ndjson');
    writeFileSync(forged, `${JSON.stringify({ ...checkpoint, events: checkpoint.events - 2 })}\n`);
    const run = await runCli(f.url, 'audit-verify', '--checkpoint-file', forged);
    assert.equal(run.code, 1, run.stdout + run.stderr);
    assert.match(run.stdout, /does not match its MAC/);
    // A file that cannot be read is the operator's error (2), not a broken log (1).
    const missing = await runCli(f.url, 'audit-verify', '--checkpoint-file', join(dir, 'nowhere.ndjson'));
    assert.equal(missing.code, 2, missing.stdout + missing.stderr);
    assert.match(missing.stderr, /nowhere\.ndjson cannot be read \(ENOENT\)/);
    const usage = await runCli(f.url, 'audit-verify', '--checkpoint-file');
    assert.equal(usage.code, 2);
  });

  it('verifies against the last whole checkpoint of a checkpoint file whose last line is damaged (an append cut short), and reports the damage: BROKEN', async () => {
    const file = join(dir, 'damaged.ndjson');
    const f = await open({ AUDIT_CHECKPOINT_FILE: file });
    const chainService = f.t.app.get(AuditChainService);
    const first = await chainService.checkpoint(true);
    assert.ok(first);
    await login(f.t.http, f.other);
    assert.ok(await chainService.checkpoint(true));
    // The service stopped while it appended the second checkpoint: its line cut short, no newline.
    const whole = readFileSync(file, 'utf8');
    writeFileSync(file, whole.slice(0, whole.length - 50));
    const run = await runCli(f.url, 'audit-verify', '--checkpoint-file', file);
    // Until 0.24.1: exit code 2, "the last line is not a checkpoint", nothing verified.
    assert.equal(run.code, 1, run.stdout + run.stderr);
    assert.match(run.stdout, /^Audit log: BROKEN$/m);
    assert.match(run.stdout, /events checked: +[1-9]/);
    assert.match(run.stdout, /checkpoint file: +\S+damaged\.ndjson \(last checkpoint: 1, then 1 damaged line\(s\), the last without its newline\)/);
    assert.match(
      run.stdout,
      /reason: +The checkpoint file ends with 1 line \(\d+ bytes, without a final newline\) after checkpoint 1 that is not a checkpoint: .*\(everything else was verified, against checkpoint 1\)\. A checkpoint cut short as it was appended \(the service stopped or the disk filled mid-append\)/,
    );
    // Verified against checkpoint 1 indeed: deleted from the table, it is the reason, the damage still shown.
    await tamper(f.t.db, `DELETE FROM audit_checkpoints`);
    await f.t.db.query(`DELETE FROM audit_checkpoint_heads`);
    const deleted = await runCli(f.url, 'audit-verify', '--checkpoint-file', file);
    assert.equal(deleted.code, 1, deleted.stdout + deleted.stderr);
    assert.match(deleted.stdout, /reason: +Checkpoint 1 from the file is missing from the table/);
    assert.match(deleted.stdout, /\(last checkpoint: 1, then 1 damaged line\(s\)/);
    // The table went back (its checkpoints deleted): the next checkpoint is not appended after
    // the file's last whole one (until 0.24.1 a damaged last line skipped that comparison).
    const cutText = readFileSync(file, 'utf8');
    await login(f.t.http, f.other);
    await chainService.checkpoint(true);
    assert.equal(readFileSync(file, 'utf8'), cutText, 'nothing appended');
    // No checkpoint at all: still the file's fault (2), nothing verified.
    const none = join(dir, 'no-checkpoint.ndjson');
    writeFileSync(none, whole.slice(0, 30));
    const refused = await runCli(f.url, 'audit-verify', '--checkpoint-file', none);
    assert.equal(refused.code, 2, refused.stdout + refused.stderr);
    assert.match(refused.stderr, /no-checkpoint\.ndjson: no line is a checkpoint/);
  });

  it('starts the next checkpoint on a line of its own after an append cut short, and then verifies against it', async () => {
    const file = join(dir, 'cut-then-appended.ndjson');
    const f = await open({ AUDIT_CHECKPOINT_FILE: file });
    const chainService = f.t.app.get(AuditChainService);
    assert.ok(await chainService.checkpoint(true));
    await login(f.t.http, f.other);
    assert.ok(await chainService.checkpoint(true));
    const whole = readFileSync(file, 'utf8');
    writeFileSync(file, whole.slice(0, whole.length - 50)); // the second line cut short, no newline
    await login(f.t.http, f.other);
    const third = await chainService.checkpoint(true);
    assert.ok(third);
    // Until 0.24.1 it joined the cut line: one unreadable line, and the file's newest checkpoint the first.
    const lines = readFileSync(file, 'utf8').split('\n');
    assert.equal(lines.length, 4, JSON.stringify(lines));
    assert.deepEqual(JSON.parse(lines[2]), third);
    const run = await runCli(f.url, 'audit-verify', '--checkpoint-file', file);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(run.stdout, new RegExp(`last line: checkpoint ${third.id}`));
  });

  it('keeps the newer line in the checkpoint file once the table went back (a restore, its tail deleted), so that verification still reports the loss', async () => {
    const file = join(dir, 'went-back.ndjson');
    const errors: string[] = [];
    const logger: LoggerService = { log: () => undefined, warn: () => undefined, error: (m: unknown) => void errors.push(String(m)) };
    const f = await open({ AUDIT_CHECKPOINT_FILE: file }, logger);
    const chainService = f.t.app.get(AuditChainService);
    assert.ok(await chainService.checkpoint(true));
    // What a backup taken now holds of the checkpoint job's own tables.
    await f.t.db.query(`CREATE TABLE backup_heads AS SELECT * FROM audit_checkpoint_heads`);
    await f.t.db.query(`CREATE TABLE backup_buckets AS SELECT * FROM audit_checkpoint_buckets`);
    await login(f.t.http, f.other);
    const newest = await chainService.checkpoint(true);
    assert.ok(newest);
    // The table goes back to before the newest checkpoint, with the heads and buckets it
    // stated, as a restore from that backup would leave them (the heads alone set back is
    // refused: test/audit-checkpoint-digest.e2e-spec.ts); the file outside the database still
    // ends with that checkpoint.
    await tamper(f.t.db, `DELETE FROM audit_checkpoints WHERE id = $1`, [newest.id]);
    await tamper(
      f.t.db,
      `DELETE FROM audit_checkpoint_heads; INSERT INTO audit_checkpoint_heads SELECT * FROM backup_heads;
       DELETE FROM audit_checkpoint_buckets; INSERT INTO audit_checkpoint_buckets SELECT * FROM backup_buckets`,
    );
    // However many checkpoints come after (the table numbers them again from where it went back).
    for (let i = 0; i < 3; i++) {
      await login(f.t.http, f.other);
      assert.ok(await chainService.checkpoint(true));
    }
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    assert.deepEqual(JSON.parse(lines[lines.length - 1]), newest, 'the file keeps the newer checkpoint as its last line');
    assert.equal(errors.length, 3, errors.join('\n'));
    for (const m of errors) {
      assert.match(
        m,
        new RegExp(`was not appended to AUDIT_CHECKPOINT_FILE: the file's last checkpoint, ${newest.id}, (is not in|differs from) the table`),
      );
    }
    assert.equal(f.t.app.get(AuditChainService).stats.fileDiverged, 3);
    const run = await runCli(f.url, 'audit-verify', '--checkpoint-file', file);
    assert.equal(run.code, 1, run.stdout + run.stderr);
    assert.match(run.stdout, new RegExp(`Checkpoint ${newest.id} from the file differs from the one in the table`));
  });

  it('checkpoints on its schedule only when due: after AUDIT_CHECKPOINT_EVERY events, not before', async () => {
    const f = await open({ AUDIT_CHECKPOINT_EVERY: '5' });
    const task = f.t.app.get(AuditCheckpointTask);
    assert.ok(f.t.app.get(SchedulerRegistry).getInterval('sessionary:audit-checkpoint'));
    // The fixture's events may have set off the writer's trigger in the background: wait for
    // that, then take the trigger off, so that only the calls below decide.
    await task.handleTick();
    f.t.app.get(AuditService).onAppended = undefined;
    const first = await f.t.app.get(AuditChainService).checkpoint(true);
    const base = first?.id ?? (await f.t.db.query(`SELECT max(id)::int AS id FROM audit_checkpoints`))[0].id;
    assert.equal(await task.handleTick(), undefined);
    await login(f.t.http, f.other); // one event: not yet due (the interval is a day)
    assert.equal(await task.handleTick(), undefined);
    for (let i = 0; i < 4; i++) await login(f.t.http, f.other);
    const second = await task.handleTick();
    assert.equal(second?.id, base + 1);
    const [{ events }] = await f.t.db.query(`SELECT count(*)::int AS events FROM audit_events`);
    assert.equal(second?.events, events);
  });

  it('detects a deleted middle checkpoint and an altered one', async () => {
    const f = await open();
    const chainService = f.t.app.get(AuditChainService);
    // Eleven: ids 10 and 11 sort before 2 as text, and must not here.
    for (let i = 0; i < 11; i++) {
      await login(f.t.http, f.other);
      assert.equal((await chainService.checkpoint(true))?.id, i + 1);
    }
    assert.equal((await apiVerify(f)).ok, true);
    await tamper(f.t.db, `UPDATE audit_checkpoints SET events = events + 1 WHERE id = 3`);
    assert.match((await apiVerify(f)).reason ?? '', /Checkpoint 3 does not match its MAC/);
    await tamper(f.t.db, `UPDATE audit_checkpoints SET events = events - 1 WHERE id = 3`);
    await tamper(f.t.db, `DELETE FROM audit_checkpoints WHERE id = 2`);
    assert.match((await apiVerify(f)).reason ?? '', /Checkpoint 3 does not follow checkpoint 1/);
    // The oldest ones deleted: what is left still links, but does not start at checkpoint 1.
    await tamper(f.t.db, `DELETE FROM audit_checkpoints WHERE id <= 3`);
    await assertBroken(f, null, /Checkpoint 4 is the first in the table, not checkpoint 1: checkpoints were deleted/);
  });

  it('stops the other verification workers once one fails, so that none scans on after the verification failed', async () => {
    const f = await open();
    const config = f.t.app.get(ConfigService);
    let survivorExited: Promise<unknown> | undefined;
    // The first worker fails at once; the second stands for one with a long scan ahead of it.
    class OneWorkerFails extends AuditVerifierService {
      private started = 0;
      protected override startWorker(): Worker {
        if (this.started++ === 0) {
          return new Worker(`require('node:worker_threads').parentPort.postMessage({ error: { message: 'a pass failed' } })`, { eval: true });
        }
        const survivor = new Worker('setInterval(() => undefined, 1000)', { eval: true });
        survivorExited = once(survivor, 'exit');
        return survivor;
      }
    }
    const verifier = new OneWorkerFails(f.t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN), f.t.app.get(AuditBaseSets), {
      get: (name: string, options?: unknown) => (name === 'AUDIT_VERIFY_WORKERS' ? 2 : config.get(name, options as never)),
    } as unknown as ConfigService<AppConfig, true>);
    verifier.minEventsForWorkers = 0;
    await assert.rejects(verifier.verify(), /a pass failed/);
    assert.ok(survivorExited, 'the passes were dealt to two workers');
    const exited = await Promise.race([survivorExited.then(() => true), sleep(5_000).then(() => false)]);
    assert.ok(exited, 'the other worker was stopped');
  });

  it('seals, in seq order, the events written before the chain existed', async () => {
    const f = await open();
    // Rows as the version before the chain wrote them, and the bound the migration records.
    await f.t.db.query(
      `INSERT INTO audit_events (type, user_id, metadata) VALUES ('LOGIN', $1, '{"b":1,"a":"x"}'), ('LOGOUT', $1, '{}'), ('LOGIN_FAILED', NULL, '{}')`,
      [f.user.id],
    );
    await tamper(f.t.db, `INSERT INTO audit_chain_seal SELECT max(seq) FROM audit_events`); // as the migration left it (the table refuses it since 0.23.0)
    assert.equal((await apiVerify(f)).ok, false);
    assert.equal(await f.t.app.get(AuditChainService).sealPending(), 3);
    const sealed = await f.t.db.query(`SELECT type, chain_pos::int AS pos FROM audit_events WHERE chain_key = $1 ORDER BY seq DESC LIMIT 2`, [
      f.user.id,
    ]);
    assert.deepEqual(sealed, [
      { type: 'LOGOUT', pos: f.chain.length + 2 },
      { type: 'LOGIN', pos: f.chain.length + 1 },
    ]);
    assert.deepEqual(await apiVerify(f), {
      ok: true,
      checked: (await f.t.db.query('SELECT count(*)::int AS n FROM audit_events'))[0].n,
      firstBrokenId: null,
      reason: null,
    });
    // The bound is gone: a row written later without the chain is not sealed.
    assert.deepEqual(await f.t.db.query('SELECT * FROM audit_chain_seal'), []);
    // Sealed, an event is refused like any other.
    const [{ id: sealedId }] = await f.t.db.query(`SELECT id FROM audit_events WHERE chain_key = $1 AND type = 'LOGOUT' ORDER BY seq DESC LIMIT 1`, [
      f.user.id,
    ]);
    await assert.rejects(f.t.db.query(`UPDATE audit_events SET chain_pos = chain_pos WHERE id = $1`, [sealedId]), /audit_events is append-only/);
  });

  it('appends in one statement on the instance that wrote the chain last, takes the head lock when another instance or a rolled-back transaction moved it, and keeps times rising along the chain', async () => {
    const f = await open();
    const second = await createTestApp({ DATABASE_URL: f.url, JWT_SECRET: f.t.config.JWT_SECRET, PASSWORD_PEPPER: f.t.config.PASSWORD_PEPPER });
    opened.push(second);
    const record = (t: TestApp, rollBack = false) => recordedAppendKinds(t, f.user.id, rollBack);
    // The fixture's events for this user were written by the first instance.
    assert.deepEqual(await record(f.t), ['try']);
    assert.deepEqual(await record(second), ['lock', 'append']);
    // Moved by the other instance: the conditional append wrote nothing, so the head is locked and the events appended after it.
    assert.deepEqual(await record(f.t), ['try', 'lock', 'append']);
    assert.deepEqual(await record(f.t), ['try']);
    assert.deepEqual(await record(f.t, true), ['try']);
    assert.deepEqual(await record(f.t), ['try', 'lock', 'append']);
    // An instance whose estimate of the database's clock runs an hour ahead writes an event
    // an hour ahead; the other instance, on the database's clock, still writes after it.
    Reflect.set(f.t.app.get(AuditService), 'clockOffsetMs', 3_600_000);
    assert.deepEqual(await record(f.t), ['try']);
    // A head time that far ahead is looked up in the event at the head (`tip`): the same, so it is kept.
    assert.deepEqual(await record(second), ['try', 'lock', 'tip', 'append']);

    const events: Array<{ chain_pos: string; created_at: Date; micros: string }> = await f.t.db.query(
      `SELECT chain_pos, created_at, (extract(epoch FROM created_at) * 1000000)::bigint::text AS micros
         FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos`,
      [f.user.id],
    );
    assert.deepEqual(
      events.map((e) => Number(e.chain_pos)),
      events.map((_, i) => i + 1),
    );
    for (let i = 1; i < events.length; i++)
      assert.ok(BigInt(events[i].micros) > BigInt(events[i - 1].micros), `event ${i + 1} is not after event ${i}`);
    assert.ok(events[events.length - 1].created_at.getTime() > Date.now() + 3_500_000);
    // A chain without a head yet (its first event): the one-head lock finds nothing, the head is created.
    const fresh = randomUUID();
    assert.deepEqual(await recordedAppendKinds(second, fresh), ['lock', 'create-or-lock', 'append']);
    assert.deepEqual(await recordedAppendKinds(second, fresh), ['try']);
    assert.deepEqual(await recordedAppendKinds(f.t, fresh), ['lock', 'append']);
    const result = await f.t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: result.ok, reason: result.reason }, { ok: true, reason: null });
  });

  it("dates an event by the database's clock, not by a head whose time was set days ahead (a head is not under the key), and says so", async () => {
    const f = await open();
    const logger = new CapturingLogger();
    const second = await createTestApp(
      { DATABASE_URL: f.url, JWT_SECRET: f.t.config.JWT_SECRET, PASSWORD_PEPPER: f.t.config.PASSWORD_PEPPER },
      { logger },
    );
    opened.push(second);
    // No trigger guards the heads: someone with the database but not the key sets this user's chain 20 days ahead.
    await f.t.db.query(`UPDATE audit_chain_heads SET last_event_at = now() + interval '20 days' WHERE chain_key = $1`, [f.user.id]);
    assert.deepEqual(await recordedAppendKinds(second, f.user.id), ['lock', 'tip', 'append']);
    const [latest] = await f.t.db.query(
      `SELECT created_at < now() + interval '1 minute' AS by_the_clock FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos DESC LIMIT 1`,
      [f.user.id],
    );
    assert.equal(latest.by_the_clock, true, 'until 0.25.0 dated 20 days ahead, and signed so');
    const errors = logger.lines.filter((l) => l.level === 'error').map((l) => l.message);
    assert.equal(errors.length, 1, errors.join('\n'));
    assert.match(errors[0], new RegExp(`^Audit chain ${f.user.id}: its head dates its newest event .* the head was altered`));
    const result = await f.t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: result.ok, reason: result.reason }, { ok: true, reason: null });
  });

  it('stops trying the one-statement append when other instances keep moving its remembered heads, and tries again once they do not', async () => {
    const f = await open();
    const second = await createTestApp({ DATABASE_URL: f.url, JWT_SECRET: f.t.config.JWT_SECRET, PASSWORD_PEPPER: f.t.config.PASSWORD_PEPPER });
    opened.push(second);
    const record = (t: TestApp) => recordedAppendKinds(t, f.user.id);
    // Round robin over two instances: every remembered head is stale. At first each instance
    // tries, misses and locks (three statements); after enough misses it locks at once (two).
    const firsts: string[][] = [];
    for (let i = 0; i < 30; i++) {
      firsts.push(await record(f.t));
      await record(second);
    }
    assert.deepEqual(firsts[1], ['try', 'lock', 'append']);
    assert.deepEqual(firsts.at(-1), ['lock', 'append']);
    const stoppedAfter = firsts.findIndex((kinds) => kinds[0] === 'lock');
    assert.ok(stoppedAfter > 1 && stoppedAfter < 30, `stopped trying after ${stoppedAfter} appends`);
    // One instance alone: the locks it takes find its remembered heads current, so it tries again, and hits.
    const alone: string[][] = [];
    for (let i = 0; i < 40; i++) alone.push(await record(f.t));
    assert.deepEqual(alone[0], ['lock', 'append']);
    assert.deepEqual(alone.at(-1), ['try']);
    // Every event is on the chain, in order, whichever way it was appended.
    const result = await f.t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: result.ok, reason: result.reason }, { ok: true, reason: null });
  });

  it("appends the cleanup lanes' batches by the one statement whatever the odds of users' heads, and leaves those odds as they were", async () => {
    const f = await open();
    const second = await createTestApp({ DATABASE_URL: f.url, JWT_SECRET: f.t.config.JWT_SECRET, PASSWORD_PEPPER: f.t.config.PASSWORD_PEPPER });
    opened.push(second);
    const record = (t: TestApp) => recordedAppendKinds(t, f.user.id);
    // Round robin over two instances until the first has stopped trying users' remembered heads.
    for (let i = 0; i < 30; i++) {
      await record(f.t);
      await record(second);
    }
    assert.deepEqual(await record(second), ['lock', 'append']);
    // Twenty batches of one lane on the first instance, one overdue session each: the first
    // locks (creates) the lane's head, every later one appends on the head it remembers.
    const maintenance = f.t.app.get(SessionMaintenanceService);
    const kinds: string[][] = [];
    for (let i = 0; i < 20; i++) {
      // Inserted here, not by a login, whose own event on this instance would move its odds.
      await f.t.db.query(
        `INSERT INTO sessions (user_id, idle_expires_at, absolute_expires_at, refresh_token_hash, refresh_expires_at)
         VALUES ($1, now() - interval '1 minute', now() + interval '1 day', md5(random()::text) || md5(random()::text), now() + interval '1 day')`,
        [f.other.id],
      );
      const spy = recordQueryRunners(f.t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN));
      try {
        assert.equal(await maintenance.endExpiredSessions(250, { index: 0, of: 1 }), 1);
      } finally {
        spy.restore();
      }
      kinds.push(
        spy.runners
          .flat()
          .map(textOf)
          .filter((t) => /audit_chain_heads/.test(t))
          .map(appendKindOf),
      );
    }
    assert.deepEqual(kinds[0], ['lock', 'create-or-lock', 'append']);
    assert.deepEqual(kinds.slice(1), Array(19).fill(['try']));
    // The user's next append on the first instance still locks at once: twenty hits on the lane did not raise its odds.
    assert.deepEqual(await record(f.t), ['lock', 'append']);
    const result = await f.t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: result.ok, reason: result.reason }, { ok: true, reason: null });
  });

  it('stays intact under concurrent logins and refreshes for the same and different users on two instances', async () => {
    // Each attempt counts as a failure until it succeeds: parallel logins of one user must not lock it.
    // The default session limit (10) is reached: logins end sessions that parallel refreshes use.
    const limits = { LOGIN_MAX_FAILURES_PER_IDENTIFIER: '1000' };
    const errors: string[] = [];
    const logger: LoggerService = {
      log: () => undefined,
      warn: () => undefined,
      error: (m: unknown, ...rest: unknown[]) => void errors.push(String(m), ...rest.map(String)),
    };
    const f = await open(limits, logger);
    const second = await createTestApp(
      { ...limits, DATABASE_URL: f.url, JWT_SECRET: f.t.config.JWT_SECRET, PASSWORD_PEPPER: f.t.config.PASSWORD_PEPPER },
      { logger },
    );
    opened.push(second);
    const users = [f.user, f.other, await registerUser(f.t.http), await registerUser(second.http)];
    const apps = [f.t, second];
    // Both pools opened first: this is about the chains under concurrent writers, and 80 requests
    // on cold pools fork 40 PostgreSQL backends at once, which on a loaded box can outlast the
    // pool's 2 s wait for a connection (a 503, seen once in CI).
    await Promise.all(apps.flatMap((app) => Array.from({ length: 20 }, () => app.db.query('SELECT pg_sleep(0.2)'))));
    const work = [];
    for (let i = 0; i < 40; i++) {
      const app = apps[i % 2];
      const user = users[i % users.length];
      work.push(
        (async () => {
          const res0 = await app.http
            .post('/api/v1/auth/login')
            .set('User-Agent', `parallel-${i}`)
            .send({ email: user.email, password: user.password });
          assert.equal(res0.status, 200, `login ${i}: ${res0.status} ${errors.join('\n').slice(0, 3000)}`);
          const tokens = res0.body;
          const res = await apps[(i + 1) % 2].http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
          assert.equal(res.status, 200, `refresh ${i}: ${res.status} ${errors.join('\n')}`);
        })(),
      );
      // Failed logins of unknown accounts all go to the one global chain.
      work.push(app.http.post('/api/v1/auth/login').send({ email: `nobody-${i}@example.test`, password: 'wrong-password-123' }));
    }
    // Checkpoints from both instances while writes go on: one of them writes each time.
    work.push(f.t.app.get(AuditChainService).checkpoint(true), second.app.get(AuditChainService).checkpoint(true));
    await Promise.all(work);
    await f.t.app.get(AuditChainService).checkpoint(true);
    const [{ n }] = await f.t.db.query(`SELECT count(*)::int AS n FROM audit_events`);
    const result = await f.t.app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: result.ok, reason: result.reason, checked: result.checked }, { ok: true, reason: null, checked: n });
    const [{ checkpoints }] = await f.t.db.query(`SELECT count(*)::int AS checkpoints FROM audit_checkpoints`);
    assert.ok(checkpoints >= 1);
  });
});

describe('locking audit chain heads (e2e)', () => {
  let t: TestApp | undefined;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  it('locks existing heads without a new row version, creates missing ones, and asks again for one created by another transaction meanwhile', async () => {
    t = await createTestApp({ DATABASE_URL: await freshDatabase() });
    const user = await registerUser(t.http);
    const dataSource = t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN);
    const [writer, other, probe] = [dataSource.createQueryRunner(), dataSource.createQueryRunner(), dataSource.createQueryRunner()];
    try {
      const [{ ctid: before }] = await writer.query(`SELECT ctid::text FROM audit_chain_heads WHERE chain_key = $1`, [user.id]);
      // Another transaction creates a head and holds it, uncommitted.
      await other.startTransaction();
      await other.query(`INSERT INTO audit_chain_heads (chain_key, position, hash) VALUES ('made-meanwhile', 7, $1)`, ['c'.repeat(64)]);
      await writer.startTransaction();
      const [{ pid }] = await writer.query(`SELECT pg_backend_pid() AS pid`);
      const locking = lockHeads(writer.manager, [user.id, 'made-meanwhile', 'new-here'].sort());
      // The writer waits on the other's uncommitted head; once it commits, its statement's
      // snapshot does not see that head, so lockHeads asks again.
      for (let waited = 0; ; waited += 20) {
        const [{ waiting }] = await probe.query(`SELECT wait_event_type = 'Lock' AS waiting FROM pg_stat_activity WHERE pid = $1`, [pid]);
        if (waiting) break;
        assert.ok(waited < 5000, 'the writer never waited for the uncommitted head');
        await new Promise((r) => setTimeout(r, 20));
      }
      await other.commitTransaction();
      const heads = await locking;
      assert.deepEqual(
        heads.map((h) => [h.chain_key, h.position]).sort(),
        [
          ['made-meanwhile', '7'],
          ['new-here', '0'],
          [user.id, '1'],
        ].sort(),
      );
      // All three are held by the writer.
      await probe.startTransaction();
      await probe.query(`SET LOCAL lock_timeout = '100ms'`);
      for (const key of [user.id, 'made-meanwhile']) {
        await assert.rejects(probe.query(`SELECT 1 FROM audit_chain_heads WHERE chain_key = $1 FOR UPDATE`, [key]), /lock timeout/);
        await probe.rollbackTransaction();
        await probe.startTransaction();
        await probe.query(`SET LOCAL lock_timeout = '100ms'`);
      }
      // The existing head was locked in place, not rewritten.
      const [{ ctid: after }] = await writer.query(`SELECT ctid::text FROM audit_chain_heads WHERE chain_key = $1`, [user.id]);
      assert.equal(after, before);
      await writer.rollbackTransaction();
    } finally {
      for (const r of [writer, other, probe]) {
        if (r.isTransactionActive) await r.rollbackTransaction();
        await r.release();
      }
    }
  });

  it('sends only the heads it found missing to the INSERT: no conflict check for the ones that exist', async () => {
    t = await createTestApp({ DATABASE_URL: await freshDatabase() });
    const users = [await registerUser(t.http), await registerUser(t.http)];
    const runner = t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN).createQueryRunner();
    try {
      await runner.startTransaction();
      const keys = [...users.map((u) => u.id), 'not-there-yet'].sort();
      const [{ 'QUERY PLAN': plan }] = await runner.query(`EXPLAIN (ANALYZE, FORMAT JSON) ${LOCK_HEADS}`, [keys, GENESIS_HASH]);
      const nodes: Array<Record<string, unknown>> = [];
      const walk = (node: Record<string, unknown>) => {
        nodes.push(node);
        for (const child of (node.Plans as Array<Record<string, unknown>>) ?? []) walk(child);
      };
      walk((plan as Array<{ Plan: Record<string, unknown> }>)[0].Plan);
      const insert = nodes.find((n) => n['Node Type'] === 'ModifyTable' && n.Operation === 'Insert')!;
      // The rows offered to the INSERT: only the missing key (until 0.13.8, all three).
      assert.equal((insert.Plans as Array<{ 'Actual Rows': number }>)[0]['Actual Rows'], 1);
      assert.equal(insert['Actual Rows'], 1);
    } finally {
      if (runner.isTransactionActive) await runner.rollbackTransaction();
      await runner.release();
    }
  });

  it('never deadlocks with another writer of the same chains when a head was created meanwhile: the missed try is undone, not completed out of order', async () => {
    t = await createTestApp({ DATABASE_URL: await freshDatabase() });
    const dataSource = t.app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN);
    // a sorts before b; b's head exists, a's is being created by another transaction.
    const [a, b] = ['deadlock-test-a', 'deadlock-test-b'];
    await dataSource.transaction((em) => lockHeads(em, [b]));
    const [writer, creator, other, probe] = [0, 1, 2, 3].map(() => dataSource.createQueryRunner());
    const waiting = async (pid: number) =>
      (await probe.query(`SELECT wait_event_type = 'Lock' AS waiting FROM pg_stat_activity WHERE pid = $1`, [pid]))[0].waiting as boolean;
    const untilWaiting = async (pid: number, what: string) => {
      for (let waited = 0; !(await waiting(pid)); waited += 20) {
        assert.ok(waited < 5000, what);
        await sleep(20);
      }
    };
    try {
      await creator.startTransaction();
      await creator.query(`INSERT INTO audit_chain_heads (chain_key, position, hash) VALUES ($1, 0, $2)`, [a, GENESIS_HASH]);
      await writer.startTransaction();
      const [{ pid: writerPid }] = await writer.query(`SELECT pg_backend_pid() AS pid`);
      // The writer's first try is held where it returns short (b locked, a missed), until the other writer waits for b.
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      let missed!: () => void;
      const tryMissed = new Promise<void>((resolve) => (missed = resolve));
      const query = writer.query.bind(writer);
      writer.query = (async (text: string, params?: unknown[], structured?: boolean) => {
        const result = await query(text, params, structured as true);
        if (typeof text === 'string' && text.includes('WITH locked AS') && result.records.length < 2) {
          missed();
          await gate;
        }
        return result;
      }) as typeof writer.query;
      const locking = lockHeads(writer.manager, [a, b]);
      await untilWaiting(writerPid, 'the writer waited for the head being created');
      await creator.commitTransaction();
      await tryMissed;
      // Another writer of both chains, in key order: a (now committed, free), then b (the writer's).
      await other.startTransaction();
      const [{ pid: otherPid }] = await other.query(`SELECT pg_backend_pid() AS pid`);
      const otherLocking = other.query(`SELECT chain_key FROM audit_chain_heads WHERE chain_key = ANY($1::text[]) ORDER BY chain_key FOR UPDATE`, [
        [a, b],
      ]);
      await untilWaiting(otherPid, 'the other writer waited for b');
      release();
      // Undone, the writer's try released b: the other writer gets both, then the writer does.
      assert.deepEqual(await otherLocking, [{ chain_key: a }, { chain_key: b }]);
      await other.commitTransaction();
      const heads = await locking;
      assert.deepEqual(heads.map((h) => h.chain_key).sort(), [a, b]);
      await writer.commitTransaction();
    } finally {
      for (const r of [writer, creator, other, probe]) {
        if (r.isTransactionActive) await r.rollbackTransaction();
        await r.release();
      }
    }
  });
});

describe('audit verification passes (e2e)', () => {
  const opened: TestApp[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!.close();
  });
  const open = async (overrides: Record<string, string> = {}) => {
    const f = await fixture(overrides);
    opened.push(f.t);
    return f;
  };

  it('checks each chain in position order whatever order its rows lie in the table', async () => {
    const f = await open();
    // Rewriting rows (a no-op UPDATE) puts their new versions after the ones that follow them.
    await tamper(f.t.db, `UPDATE audit_events SET type = type WHERE id = ANY($1::uuid[])`, [[f.chain[0].id, f.chain[1].id, f.chain[4].id]]);
    const inTable: Array<{ pos: number }> = await f.t.db.query(
      // The order a sequential scan reads them in (all of them are in this month's partition).
      `SELECT chain_pos::int AS pos FROM audit_events WHERE chain_key = $1 ORDER BY tableoid, ctid`,
      [f.user.id],
    );
    const positions = inTable.map((r) => r.pos);
    assert.notDeepEqual(
      positions,
      [...positions].sort((a, b) => a - b),
      'the table holds the chain out of order',
    );
    const [{ n }] = await f.t.db.query(`SELECT count(*)::int AS n FROM audit_events`);
    for (const r of await everyWay(f)) assert.deepEqual(r, { ok: true, checked: n, firstBrokenId: null, reason: null, chains: r.chains });

    // Out of order and broken: the first broken event in position order is named, every way.
    await tamper(f.t.db, `DELETE FROM audit_events WHERE id = $1`, [f.chain[2].id]);
    await tamper(f.t.db, `UPDATE audit_events SET ip_address = '198.51.100.7' WHERE id = $1`, [f.chain[5].id]);
    for (const r of await everyWay(f)) {
      assert.equal(r.ok, false);
      assert.equal(r.firstBrokenId, f.chain[3].id, r.reason ?? '');
      assert.match(r.reason!, /position 4 .* where 3 was expected/);
    }
  });

  it('defers a chain whose early rows would pass the limit (its first events deleted) and walks it by position, with the same findings', async () => {
    const f = await open();
    /** One pass over every chain, on its own connection, holding at most `pendingLimit` early rows. */
    const pass = async (pendingLimit?: number) => {
      const client = new Client({ connectionString: f.url });
      await client.connect();
      try {
        await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
        for (const setting of VERIFY_PASS_SETTINGS) await client.query(setting);
        return await runVerifyPass(client, {
          from: null,
          to: null,
          key: f.t.app.get(ConfigService).getOrThrow<string>('AUDIT_HMAC_KEY'),
          baseMonth: null,
          pendingLimit,
        });
      } finally {
        await client.end();
      }
    };
    // Intact, but the chain's 3rd and 4th events lie at the table's end: the ones after them wait.
    await tamper(f.t.db, `UPDATE audit_events SET type = type WHERE id = ANY($1::uuid[])`, [[f.chain[2].id, f.chain[3].id]]);
    const held = await pass();
    assert.deepEqual([held.broken, held.deferred], [null, 0]);
    const deferred = await pass(2);
    assert.equal(deferred.deferred, 1, 'the chain was deferred');
    assert.deepEqual({ ...deferred, deferred: 0 }, held);

    // A copy of its first event, after the chain was deferred: still found by the scan.
    const [{ id: copy }] = await f.t.db.query(
      `INSERT INTO audit_events (id, type, user_id, session_id, ip_address, user_agent, metadata, created_at, chain_key, chain_pos, prev_hash, hash)
       SELECT gen_random_uuid(), type, user_id, session_id, ip_address, user_agent, metadata, created_at, chain_key, chain_pos, prev_hash, hash
         FROM audit_events WHERE id = $1 RETURNING id`,
      [f.chain[0].id],
    );
    for (const limit of [undefined, 2]) {
      const r = await pass(limit);
      assert.equal(r.deferred, limit === undefined ? 0 : 1);
      assert.equal(r.broken?.eventId, copy, r.broken?.reason);
      assert.match(r.broken!.reason, /position 1 .* which another event holds/);
    }

    // Its first event deleted (and the copy): the same break, whether the rest waited or was walked by position.
    await tamper(f.t.db, `DELETE FROM audit_events WHERE id = ANY($1::uuid[])`, [[f.chain[0].id, copy]]);
    for (const limit of [undefined, 2, 0]) {
      const r = await pass(limit);
      assert.equal(r.deferred, limit === undefined ? 0 : 1);
      assert.equal(r.broken?.eventId, f.chain[1].id, r.broken?.reason);
      assert.match(r.broken!.reason, /position 2 .* where 1 was expected/);
    }
    for (const r of await everyWay(f)) assert.equal(r.firstBrokenId, f.chain[1].id);
  });

  it('names the same first broken event on one thread and on several workers, for each kind of break', async () => {
    const f = await open();
    await tamper(f.t.db, `UPDATE audit_events SET user_agent = 'forged' WHERE id = $1`, [f.chain[6].id]);
    await tamper(f.t.db, `UPDATE audit_events SET user_id = $2 WHERE id = $1`, [f.chain[3].id, f.other.id]);
    const results = await everyWay(f);
    for (const r of results) {
      assert.equal(r.firstBrokenId, f.chain[3].id);
      assert.match(r.reason!, /moved to another user/);
    }
    assert.deepEqual(new Set(results.map((r) => r.checked)).size, 1);
  });

  it("reads PostgreSQL's time text as the chain hashes it (to the microsecond, whatever the digits)", async () => {
    const f = await open();
    const times = [
      '2026-01-01 00:00:00+00',
      '2026-01-01 00:00:00.1+00',
      '2026-12-31 23:59:59.999999+00',
      '2000-02-29 12:34:56.00012+00',
      '1999-07-04 01:02:03.12+00',
    ];
    const rows: Array<{ text: string; hashed: string }> = await f.t.db.transaction(async (em) => {
      await em.query(`SET LOCAL TimeZone = 'UTC'`);
      await em.query(`SET LOCAL DateStyle = 'ISO, YMD'`);
      return em.query(`SELECT t::text AS text, to_char(t AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS hashed FROM unnest($1::timestamptz[]) AS t`, [
        times,
      ]);
    });
    assert.equal(rows.length, times.length);
    for (const r of rows) assert.equal(microsUtcOf(r.text), r.hashed);
    // Anything else (an altered row) is hashed as it is, so that it fails its hash.
    assert.equal(microsUtcOf('infinity'), 'infinity');
  });
});

describe('audit checkpoint heads migration (e2e)', () => {
  it("carries the recorded heads back into the heads' columns and over again into their own table: the log verifies after it, and the next checkpoint follows", async () => {
    const url = await freshDatabase();
    const t = await createTestApp({ DATABASE_URL: url });
    const migrator = await new DataSource(dataSourceOptions(url)).initialize();
    try {
      const users = [await registerUser(t.http), await registerUser(t.http)];
      for (const user of users) await login(t.http, user);
      const first = await t.app.get(AuditChainService).checkpoint(true);
      assert.ok(first);
      const recorded = await t.db.query(`SELECT chain_key, position::int AS position, hash FROM audit_checkpoint_heads ORDER BY chain_key`);
      assert.equal(recorded.length, first.chains);

      // Back to 0.11.0's schema: the recorded heads in the heads' columns (the later migrations go first).
      const undo = MIGRATIONS.length - MIGRATIONS.indexOf(AuditCheckpointHeads1766300000000);
      for (let i = 0; i < undo; i++) await migrator.undoLastMigration({ transaction: 'each' });
      const [{ table }] = await t.db.query(`SELECT to_regclass('audit_checkpoint_heads') IS NOT NULL AS table`);
      assert.equal(table, false);
      const inColumns = await t.db.query(
        `SELECT chain_key, checkpoint_position::int AS position, checkpoint_hash AS hash FROM audit_chain_heads
          WHERE checkpoint_position IS NOT NULL ORDER BY chain_key`,
      );
      assert.deepEqual(inColumns, recorded);

      // And forward again, as an upgrade from 0.11.0 runs it (the checkpoint's digest, of format 2, still verifies).
      await runMigrationsLocked(migrator);
      const moved = await t.db.query(`SELECT chain_key, position::int AS position, hash FROM audit_checkpoint_heads ORDER BY chain_key`);
      assert.deepEqual(moved, recorded);
      const [{ columns }] = await t.db.query(
        `SELECT count(*)::int AS columns FROM information_schema.columns WHERE table_name = 'audit_chain_heads' AND column_name LIKE 'checkpoint_%'`,
      );
      assert.equal(columns, 0);
      assert.equal((await t.app.get(AuditVerifierService).verify()).ok, true);
      await login(t.http, users[0]);
      assert.equal((await t.app.get(AuditChainService).checkpoint(true))?.id, first.id + 1);
      const result = await t.app.get(AuditVerifierService).verify();
      assert.equal(result.ok, true, JSON.stringify(result));
    } finally {
      await migrator.destroy();
      await t.close();
    }
  });
});

describe('audit checkpoints of many changed heads (e2e)', () => {
  it('locks no head: a login on a changed chain goes through while a checkpoint waits before its COMMIT, and the checkpoint keeps the head it read', async () => {
    const url = await freshDatabase();
    const t = await createTestApp({ DATABASE_URL: url });
    const blocker = new Client({ connectionString: url });
    await blocker.connect();
    try {
      const user = await registerUser(t.http);
      await login(t.http, user);
      // A chain the second checkpoint below finds unchanged: its digest keeps it as the first stated it.
      await registerUser(t.http);
      const headOf = async () =>
        (
          await t.db.query(
            `SELECT h.position::int AS position, c.position::int AS checkpointed
               FROM audit_chain_heads h LEFT JOIN audit_checkpoint_heads c ON c.chain_key = h.chain_key WHERE h.chain_key = $1`,
            [user.id],
          )
        )[0] as { position: number; checkpointed: number | null };
      const read = await headOf();
      assert.notEqual(read.checkpointed, read.position, 'the chain changed since the last checkpoint');
      // Holds the checkpoint at the INSERT of its row, its last statement: by then it has copied and digested the heads.
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE audit_checkpoints IN EXCLUSIVE MODE');
      let finished = false;
      const pending = t.app
        .get(AuditChainService)
        .checkpoint(true)
        .finally(() => (finished = true));
      for (let waited = 0; ; waited += 50) {
        const [{ waiting }] = await t.db.query(
          `SELECT count(*)::int AS waiting FROM pg_locks WHERE relation = 'audit_checkpoints'::regclass AND NOT granted`,
        );
        if (waiting) break;
        assert.ok(waited < 10_000, 'the checkpoint reached its INSERT');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      // A login appends to the user's chain: its head is not locked by the checkpoint.
      const loggedIn = await Promise.race([
        login(t.http, user).then(() => true),
        new Promise<false>((resolve) => setTimeout(() => resolve(false), 10_000)),
      ]);
      assert.equal(loggedIn, true, 'the login went through within 10 s while the checkpoint was held');
      assert.equal(finished, false, 'the checkpoint was still held');
      await blocker.query('COMMIT');
      const checkpoint = await pending;
      assert.ok(checkpoint);
      // It states the head as it read it; the login's newer events are for the next one.
      const after = await headOf();
      assert.ok(after.position > read.position);
      assert.equal(after.checkpointed, read.position);
      const result = await t.app.get(AuditVerifierService).verify();
      assert.equal(result.ok, true, JSON.stringify(result));
      await t.app.get(AuditChainService).checkpoint(true);
      assert.equal((await headOf()).checkpointed, after.position);
      assert.equal((await t.app.get(AuditVerifierService).verify()).ok, true);
    } finally {
      await blocker.end();
      await t.close();
    }
  });

  it('analyzes the checkpointed heads after a copy that changed a large share of them, not after a small one', async () => {
    const url = await freshDatabase();
    const t = await createTestApp({ DATABASE_URL: url });
    try {
      await registerUser(t.http);
      const reltuples = async () =>
        Number((await t.db.query(`SELECT reltuples::float8 AS n FROM pg_class WHERE oid = 'audit_checkpoint_heads'::regclass`))[0].n);
      // Heads as a large log's first checkpoint finds them (written here directly: only their count matters).
      await t.db.query(
        `INSERT INTO audit_chain_heads (chain_key, position, hash) SELECT 'bulk-' || lpad(i::text, 6, '0'), 1, repeat('a', 64) FROM generate_series(1, 12000) i`,
      );
      assert.ok(await t.app.get(AuditChainService).checkpoint(true));
      const analyzed = await reltuples();
      assert.ok(analyzed >= 12_000, `statistics after the large copy: ${analyzed} rows`);
      // 500 more, each with its event (a checkpoint finds the chains that moved by their events since the last): an ANALYZE would count them.
      await t.db.query(
        `INSERT INTO audit_chain_heads (chain_key, position, hash) SELECT 'more-' || lpad(i::text, 6, '0'), 1, repeat('a', 64) FROM generate_series(1, 500) i`,
      );
      await t.db.query(
        `INSERT INTO audit_events (id, type, metadata, created_at, chain_key, chain_pos, prev_hash, hash)
         SELECT gen_random_uuid(), 'LOGIN', '{}', now(), 'more-' || lpad(i::text, 6, '0'), 1, repeat('0', 64), repeat('a', 64) FROM generate_series(1, 500) i`,
      );
      assert.ok(await t.app.get(AuditChainService).checkpoint(true));
      const [{ n }] = await t.db.query(`SELECT count(*)::int AS n FROM audit_checkpoint_heads`);
      assert.ok(n >= analyzed + 500);
      assert.equal(await reltuples(), analyzed, 'a copy of a few hundred heads leaves the statistics as they were');
    } finally {
      await t.close();
    }
  });

  it("finishes beyond the pool's statement timeout (the first checkpoint of a large log)", async () => {
    const url = await freshDatabase();
    const t = await createTestApp({ DATABASE_URL: url });
    // The same pool, with a statement timeout of 200 ms, and heads that take 300 ms to copy.
    const options = dataSourceOptions(url) as DataSourceOptions & { extra: Record<string, unknown> };
    const slow = await new DataSource({ ...options, extra: { ...options.extra, statement_timeout: 200 } }).initialize();
    try {
      await registerUser(t.http);
      await t.db.query(`CREATE FUNCTION slow_copy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$`);
      await t.db.query(`CREATE TRIGGER slow_copy BEFORE INSERT ON audit_checkpoint_heads FOR EACH STATEMENT EXECUTE FUNCTION slow_copy()`);
      const checkpoint = await new AuditChainService(slow, t.app.get(ConfigService)).checkpoint(true);
      assert.ok(checkpoint, 'a checkpoint was written');
      const [{ n }] = await t.db.query(
        `SELECT count(*)::int AS n FROM audit_chain_heads h LEFT JOIN audit_checkpoint_heads c ON c.chain_key = h.chain_key
          WHERE c.position IS DISTINCT FROM h.position`,
      );
      assert.equal(n, 0);
      // While a plain statement on that pool is still cut at 200 ms.
      await assert.rejects(slow.query(`SELECT pg_sleep(0.3)`), /statement timeout/);
    } finally {
      await slow.destroy();
      await t.close();
    }
  });
});
