import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { LoggerService } from '@nestjs/common';
import { checkpointMac, GENESIS_HASH, PG_MICROS_UTC } from '../src/audit/audit-chain';
import { AuditChainService, digestCheckpointedHeads } from '../src/audit/audit-chain.service';
import { AuditCheckpointTask } from '../src/audit/audit-checkpoint.task';
import { AuditService } from '../src/audit/audit.service';
import { AuditVerifierService } from '../src/audit/audit-verifier.service';
import { bucketOf, HeadsBucketer } from '../src/audit/checkpoint-heads-digest';
import { login, registerUser, TestUser } from './helpers/factories';
import { tamper } from './helpers/db';
import { recordQueryRunners, textOf } from './helpers/query-runners';
import { createTestApp, freshDatabase, TEST_AUDIT_HMAC_KEY, TestApp } from './helpers/test-app';

/** The stored bucket digests, by bucket. */
async function storedBuckets(t: TestApp): Promise<Map<string, string>> {
  const rows: Array<{ bucket: string; digest: string }> = await t.db.query(`SELECT bucket, digest FROM audit_checkpoint_buckets`);
  return new Map(rows.map((r) => [r.bucket, r.digest]));
}

describe('audit checkpoint digests, format 2 (e2e)', () => {
  const opened: TestApp[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!.close();
  });
  /** An app on a fresh database with three users' chains and the global chain (a failed login of an unknown account). */
  const open = async (logger?: LoggerService): Promise<{ t: TestApp; users: TestUser[] }> => {
    const t = await createTestApp({ DATABASE_URL: await freshDatabase() }, { logger });
    opened.push(t);
    const users = [await registerUser(t.http), await registerUser(t.http), await registerUser(t.http)];
    for (const user of users) await login(t.http, user);
    assert.equal((await t.http.post('/api/v1/auth/login').send({ email: 'nobody@example.test', password: 'wrong-password-123' })).status, 401);
    return { t, users };
  };
  const verify = (t: TestApp) => t.app.get(AuditVerifierService).verify();

  it('hashes again only the buckets whose heads moved, reading no other head, and the verifier, hashing every head, agrees', async () => {
    const { t, users } = await open();
    const chain = t.app.get(AuditChainService);
    const first = await chain.checkpoint(true);
    assert.ok(first);
    assert.match(first.digest, /^v2:[0-9a-f]{64}$/);
    const [{ buckets }] = await t.db.query(`SELECT count(DISTINCT left(chain_key, 4))::int AS buckets FROM audit_checkpoint_heads`);
    const before = await storedBuckets(t);
    assert.equal(before.size, buckets);
    assert.ok(before.has('glob'));

    await login(t.http, users[0]);
    const { runners, restore } = recordQueryRunners(t.db);
    let second;
    try {
      second = await chain.checkpoint(true);
    } finally {
      restore();
    }
    assert.equal(second?.id, 2);
    const sent = runners.flat().map(textOf);
    assert.ok(
      sent.some((s) => /CROSS JOIN LATERAL \(\s*SELECT chain_key, position, hash FROM audit_checkpoint_heads/.test(s)),
      'the touched bucket was read by its key range',
    );
    assert.ok(!sent.some((s) => /DECLARE sessionary_heads_digest/.test(s)), 'no read of every head');
    const after = await storedBuckets(t);
    const changed = [...after].filter(([bucket, digest]) => before.get(bucket) !== digest).map(([bucket]) => bucket);
    assert.deepEqual(changed, [bucketOf(users[0].id)]);
    assert.equal(after.size, before.size);

    const result = await verify(t);
    assert.equal(result.ok, true, JSON.stringify(result));
    assert.equal(result.checkpointId, 2);
  });

  it('does not trust its stored buckets: one changed is found before the next checkpoint, which hashes every bucket again from the heads', async () => {
    const warnings: string[] = [];
    const logger: LoggerService = { log: () => undefined, warn: (m: unknown) => void warnings.push(String(m)), error: () => undefined };
    const { t, users } = await open(logger);
    const chain = t.app.get(AuditChainService);
    assert.ok(await chain.checkpoint(true));
    const before = await storedBuckets(t);
    // A bucket the next checkpoint does not touch (user ids are hex: none is in the global chain's bucket).
    await t.db.query(`UPDATE audit_checkpoint_buckets SET digest = repeat('0', 64) WHERE bucket = 'glob'`);
    await login(t.http, users[1]);
    // Until 0.23.0 the next checkpoint's root took the changed digest as it was (the verifier found it afterwards).
    assert.equal((await chain.checkpoint(true))?.id, 2);
    assert.ok(
      warnings.some((w) => /The stored bucket digests do not make checkpoint 1's root, its heads do .*: hashing every bucket again/.test(w)),
      warnings.join('\n'),
    );
    assert.equal((await storedBuckets(t)).get('glob'), before.get('glob'));
    const result = await verify(t);
    assert.equal(result.ok, true, JSON.stringify(result));
  });

  it('writes no checkpoint over recorded heads set back (a deleted tail covered up), whether their buckets were hashed to match or not', async () => {
    const { t, users } = await open();
    const chain = t.app.get(AuditChainService);
    await login(t.http, users[0]);
    assert.ok(await chain.checkpoint(true));
    const [head] = await t.db.query(`SELECT position::int AS position FROM audit_checkpoint_heads WHERE chain_key = $1`, [users[0].id]);
    const [earlier] = await t.db.query(`SELECT hash FROM audit_events WHERE chain_key = $1 AND chain_pos = $2`, [users[0].id, head.position - 1]);
    // The chain's last event deleted, its head and its recorded head set back by one to match.
    await tamper(t.db, `DELETE FROM audit_events WHERE chain_key = $1 AND chain_pos = $2`, [users[0].id, head.position]);
    await t.db.query(`UPDATE audit_chain_heads SET position = position - 1, hash = $2 WHERE chain_key = $1`, [users[0].id, earlier.hash]);
    await t.db.query(`UPDATE audit_checkpoint_heads SET position = position - 1, hash = $2 WHERE chain_key = $1`, [users[0].id, earlier.hash]);
    const refusal = /No audit checkpoint written: the checkpointed chain heads are not those checkpoint 1 stated/;
    // The recorded head's bucket no longer hashes as stored: refused when the copy touches it.
    await login(t.http, users[0]);
    await assert.rejects(chain.checkpoint(true), refusal);
    // Its stored bucket hashed again to match (it is not keyed): then the root is not the last checkpoint's.
    const rows: Array<{ chain_key: string; position: string; hash: string }> = await t.db.query(
      `SELECT chain_key, position::text AS position, hash FROM audit_checkpoint_heads WHERE left(chain_key, 4) = $1 ORDER BY chain_key COLLATE "C"`,
      [bucketOf(users[0].id)],
    );
    const hashed: Array<{ digest: string }> = [];
    const bucketer = new HeadsBucketer((b) => hashed.push(b));
    for (const r of rows) bucketer.add(r.chain_key, Number(r.position), r.hash);
    bucketer.flush();
    const [{ digest }] = hashed;
    await t.db.query(`UPDATE audit_checkpoint_buckets SET digest = $2, events = events - 1 WHERE bucket = $1`, [bucketOf(users[0].id), digest]);
    await assert.rejects(chain.checkpoint(true), refusal);
    assert.equal((await t.db.query(`SELECT count(*)::int AS n FROM audit_checkpoints`))[0].n, 1);
    const result = await verify(t);
    assert.equal(result.ok, false);
    // A checkpoint written over them anyway (as a writer before 0.23.0 did) states fewer events than the one before it.
    const [c1] = await t.db.query(`SELECT id, created_at, chains::int, events::text, max_seq::text, digest, mac FROM audit_checkpoints`);
    const fields = {
      id: 2,
      createdAt: new Date().toISOString().replace('Z', '000Z'),
      chains: c1.chains,
      events: Number(c1.events) - 1,
      maxSeq: c1.max_seq,
      digest: c1.digest,
      prevMac: c1.mac,
    };
    await t.db.query(
      `INSERT INTO audit_checkpoints (id, created_at, chains, events, max_seq, digest, prev_mac, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
      [
        fields.id,
        fields.createdAt,
        fields.chains,
        fields.events,
        fields.maxSeq,
        fields.digest,
        fields.prevMac,
        checkpointMac(TEST_AUDIT_HMAC_KEY, fields),
      ],
    );
    assert.match(
      (await verify(t)).reason ?? '',
      /Checkpoint 2 states \d+ chains and \d+ events, fewer than checkpoint 1's .*: events the earlier checkpoint covered were deleted/,
    );
  });

  it('hashes every bucket again when the stored ones do not count the chains the last checkpoint stated', async () => {
    const warnings: string[] = [];
    const logger: LoggerService = { log: () => undefined, warn: (m: unknown) => void warnings.push(String(m)), error: () => undefined };
    const { t } = await open(logger);
    const chain = t.app.get(AuditChainService);
    assert.ok(await chain.checkpoint(true));
    const before = await storedBuckets(t);
    // As a migration reverted and applied again leaves them.
    await t.db.query(`DELETE FROM audit_checkpoint_buckets`);
    const added = await registerUser(t.http);
    assert.equal((await chain.checkpoint(true))?.id, 2);
    assert.ok(
      warnings.some((w) => /The stored bucket digests do not make checkpoint 1's root, its heads do .*: hashing every bucket again/.test(w)),
      warnings.join('\n'),
    );
    // All of them again, as they were but for the new user's.
    const after = await storedBuckets(t);
    assert.ok(after.has(bucketOf(added.id)));
    for (const [bucket, digest] of before) if (bucket !== bucketOf(added.id)) assert.equal(after.get(bucket), digest, bucket);
    const result = await verify(t);
    assert.equal(result.ok, true, JSON.stringify(result));
  });

  it('verifies a checkpoint of format 1 (written before 0.12.0), and follows it with one of format 2', async () => {
    const { t, users } = await open();
    // A checkpoint as 0.11.1 wrote it: the heads copied, their digest in format 1, MAC'd.
    await t.db.transaction(async (em) => {
      await em.query(`INSERT INTO audit_checkpoint_heads (chain_key, position, hash) SELECT chain_key, position, hash FROM audit_chain_heads`);
      const heads = await digestCheckpointedHeads(em, 'v1');
      const [{ now, seq }] = await em.query(
        `SELECT to_char(now() AT TIME ZONE 'UTC', ${PG_MICROS_UTC}) AS now, max(seq)::text AS seq FROM audit_events`,
      );
      const fields = { id: 1, createdAt: now, chains: heads.chains, events: heads.events, maxSeq: seq, digest: heads.digest, prevMac: GENESIS_HASH };
      await em.query(
        `INSERT INTO audit_checkpoints (id, created_at, chains, events, max_seq, digest, prev_mac, mac) VALUES ($1, $2::timestamptz, $3, $4, $5, $6, $7, $8)`,
        [...Object.values(fields), checkpointMac(TEST_AUDIT_HMAC_KEY, fields)],
      );
      assert.match(heads.digest, /^[0-9a-f]{64}$/);
    });
    let result = await verify(t);
    assert.equal(result.ok, true, JSON.stringify(result));
    assert.equal(result.checkpointId, 1);

    await login(t.http, users[0]);
    const next = await t.app.get(AuditChainService).checkpoint(true);
    assert.equal(next?.id, 2);
    assert.match(next.digest, /^v2:/);
    const [{ buckets }] = await t.db.query(`SELECT count(*)::int AS buckets FROM audit_checkpoint_buckets`);
    assert.ok(buckets >= 4, `every bucket hashed: ${buckets}`);
    result = await verify(t);
    assert.equal(result.ok, true, JSON.stringify(result));
    assert.equal(result.checkpointId, 2);
  });

  it('counts, times and dates the checkpoints an instance writes, and the ticks that fail, in /metrics', async () => {
    const t = await createTestApp({ DATABASE_URL: await freshDatabase(), AUDIT_CHECKPOINT_EVERY: '1' });
    opened.push(t);
    const user = await registerUser(t.http);
    const task = t.app.get(AuditCheckpointTask);
    // Checkpoints the registration set off in the background: wait for them, then only the calls below decide.
    await task.handleTick();
    t.app.get(AuditService).onAppended = undefined;
    const scrape = async () => {
      const text = (await t.http.get('/metrics')).text;
      // Every metric must be there: a missing line would read NaN, which deepEqual takes for equal to NaN.
      const value = (line: string) => {
        const found = Number(
          text
            .split('\n')
            .find((l) => l.startsWith(`${line} `))
            ?.split(' ')[1],
        );
        assert.ok(Number.isFinite(found), `${line} is in /metrics`);
        return found;
      };
      return {
        written: value('sessionary_audit_checkpoints_total{outcome="written"}'),
        failed: value('sessionary_audit_checkpoints_total{outcome="failed"}'),
        allBuckets: value('sessionary_audit_checkpoint_all_buckets_hashed_total'),
        at: value('sessionary_audit_checkpoint_last_timestamp_seconds'),
        seconds: value('sessionary_audit_checkpoint_last_duration_seconds'),
      };
    };
    const before = await scrape();

    await login(t.http, user);
    const written = await task.handleTick();
    assert.ok(written, 'a checkpoint was due after one event');
    let now = await scrape();
    assert.deepEqual(
      { written: now.written, failed: now.failed, allBuckets: now.allBuckets },
      { written: before.written + 1, failed: before.failed, allBuckets: before.allBuckets },
    );
    assert.equal(now.at, Date.parse(written.createdAt) / 1000);
    assert.ok(now.seconds > 0 && now.seconds < 60, String(now.seconds));

    // A checkpoint that fails (its bucket digests cannot be stored) is counted, and nothing is written.
    await t.db.query(`CREATE FUNCTION refuse_buckets() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$`);
    await t.db.query(`CREATE TRIGGER refuse_buckets BEFORE INSERT ON audit_checkpoint_buckets FOR EACH ROW EXECUTE FUNCTION refuse_buckets()`);
    await login(t.http, user);
    assert.equal(await task.handleTick(), undefined);
    now = await scrape();
    assert.deepEqual({ written: now.written, failed: now.failed }, { written: before.written + 1, failed: before.failed + 1 });

    // Stored buckets that do not add up: the next checkpoint hashes every bucket, and says so.
    await t.db.query(`DROP TRIGGER refuse_buckets ON audit_checkpoint_buckets`);
    await t.db.query(`DELETE FROM audit_checkpoint_buckets`);
    assert.ok(await task.handleTick());
    now = await scrape();
    assert.deepEqual(
      { written: now.written, failed: now.failed, allBuckets: now.allBuckets },
      { written: before.written + 2, failed: before.failed + 1, allBuckets: before.allBuckets + 1 },
    );
    assert.equal((await verify(t)).ok, true);
  });
});

describe('audit checkpoints: the chains that moved (e2e)', () => {
  const opened: TestApp[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!.close();
  });
  const open = async () => {
    const t = await createTestApp({ DATABASE_URL: await freshDatabase() });
    opened.push(t);
    return t;
  };
  /** The statements the checkpoint sent, and what it returned. */
  const checkpointRecorded = async (t: TestApp) => {
    const { runners, restore } = recordQueryRunners(t.db);
    try {
      const checkpoint = await t.app.get(AuditChainService).checkpoint(true);
      return { checkpoint, sent: runners.flat().map(textOf) };
    } finally {
      restore();
    }
  };
  const copy = (sent: string[]) => sent.find((s) => /INSERT INTO audit_checkpoint_heads/.test(s)) ?? '';
  const recordedHead = async (t: TestApp, chainKey: string) =>
    (await t.db.query(`SELECT position::int AS position FROM audit_checkpoint_heads WHERE chain_key = $1`, [chainKey]))[0]?.position as
      number | undefined;
  const actualHead = async (t: TestApp, chainKey: string) =>
    (await t.db.query(`SELECT position::int AS position FROM audit_chain_heads WHERE chain_key = $1`, [chainKey]))[0].position as number;

  /**
   * A user's chain checkpointed, then cut by someone with the database: its last two events
   * deleted and its head set back to the one before them.
   */
  const checkpointedThenCut = async () => {
    const t = await open();
    const a = await registerUser(t.http);
    for (let i = 0; i < 3; i++) await login(t.http, a);
    assert.ok(await t.app.get(AuditChainService).checkpoint(true));
    const recorded = (await recordedHead(t, a.id))!;
    const chain: Array<{ id: string; hash: string }> = await t.db.query(`SELECT id, hash FROM audit_events WHERE chain_key = $1 ORDER BY chain_pos`, [
      a.id,
    ]);
    await tamper(t.db, `DELETE FROM audit_events WHERE id = ANY($1::uuid[])`, [chain.slice(-2).map((e) => e.id)]);
    await t.db.query(`UPDATE audit_chain_heads SET position = $2, hash = $3 WHERE chain_key = $1`, [a.id, recorded - 2, chain[recorded - 3].hash]);
    return { t, a, recorded };
  };

  it('finds them by their events since the last checkpoint, comparing no other head, and states the seq it covers', async () => {
    const t = await open();
    const [a, b] = [await registerUser(t.http), await registerUser(t.http)];
    const first = await checkpointRecorded(t);
    assert.ok(first.checkpoint);
    assert.match(copy(first.sent), /FROM audit_chain_heads h LEFT JOIN/, 'the first one compares every head');
    await login(t.http, a);
    const second = await checkpointRecorded(t);
    assert.ok(second.checkpoint);
    assert.match(copy(second.sent), /SELECT DISTINCT chain_key FROM audit_events WHERE seq > \$1/);
    assert.doesNotMatch(copy(second.sent), /FROM audit_chain_heads h LEFT JOIN/);
    const [{ max }] = await t.db.query(`SELECT max(seq)::text AS max FROM audit_events`);
    assert.equal(second.checkpoint.maxSeq, max);
    assert.equal(await recordedHead(t, a.id), await actualHead(t, a.id));
    assert.equal(await recordedHead(t, b.id), await actualHead(t, b.id));
    const result = await t.app.get(AuditVerifierService).verify();
    assert.equal(result.ok, true, JSON.stringify(result));
  });

  it('claims no seq an uncommitted event may hold: a later checkpoint still finds that event once it commits', async () => {
    const t = await open();
    const [a, b] = [await registerUser(t.http), await registerUser(t.http)];
    const first = await t.app.get(AuditChainService).checkpoint(true);
    assert.ok(first);
    // A transaction appends to a's chain and stays open (a slow request): its event has a seq, uncommitted.
    const runner = t.db.createQueryRunner();
    await runner.connect();
    await runner.startTransaction();
    try {
      await t.app.get(AuditService).record(runner.manager, { type: 'PROFILE_UPDATED', userId: a.id, metadata: { fields: 'username' } });
      const [{ pending }] = await runner.query(`SELECT max(seq)::text AS pending FROM audit_events`);
      // b's login commits an event with a greater seq.
      await login(t.http, b);
      Reflect.set(t.app.get(AuditChainService), 'settleTimeoutMs', 300);
      const second = await t.app.get(AuditChainService).checkpoint(true);
      assert.ok(second);
      assert.equal(second.maxSeq, first.maxSeq, 'a seq is still in flight: it claims no more than the last one');
      assert.ok(BigInt(pending) > BigInt(first.maxSeq));
      assert.equal(await recordedHead(t, b.id), await actualHead(t, b.id));
      await runner.commitTransaction();
    } finally {
      if (runner.isTransactionActive) await runner.rollbackTransaction();
      await runner.release();
    }
    const third = await t.app.get(AuditChainService).checkpoint(true);
    assert.ok(third);
    const [{ max }] = await t.db.query(`SELECT max(seq)::text AS max FROM audit_events`);
    assert.equal(third.maxSeq, max);
    assert.equal(await recordedHead(t, a.id), await actualHead(t, a.id), "the slow transaction's event is in the chain's recorded head");
    const result = await t.app.get(AuditVerifierService).verify();
    assert.equal(result.ok, true, JSON.stringify(result));
  });

  it("waits for no transaction that took no seq: another application's write left open, a pg_dump-like read of the sequence running a statement", async () => {
    const t = await open();
    const a = await registerUser(t.http);
    const first = await t.app.get(AuditChainService).checkpoint(true);
    assert.ok(first);
    await t.db.query(`CREATE TABLE other_application_rows (x int)`);
    const writer = t.db.createQueryRunner();
    const dumper = t.db.createQueryRunner();
    await Promise.all([writer.connect(), dumper.connect()]);
    let dumping: Promise<unknown> | undefined;
    try {
      // A transaction with a transaction id (it wrote a row of another table), idle: a host's or a DBA's.
      await writer.query('BEGIN');
      await writer.query('INSERT INTO other_application_rows VALUES (1)');
      // As pg_dump does: a snapshot that reads the sequence, then a statement that runs on.
      await dumper.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const [{ sequence }] = await dumper.query(`SELECT pg_get_serial_sequence('audit_events', 'seq') AS sequence`);
      await dumper.query(`SELECT last_value, is_called FROM ${sequence}`);
      dumping = dumper.query('SELECT pg_sleep(2)');
      await login(t.http, a);
      Reflect.set(t.app.get(AuditChainService), 'settleTimeoutMs', 300);
      const second = await t.app.get(AuditChainService).checkpoint(true);
      assert.ok(second);
      const [{ last }] = await t.db.query(`SELECT pg_sequence_last_value(pg_get_serial_sequence('audit_events', 'seq')::regclass)::text AS last`);
      assert.notEqual(last, first.maxSeq);
      assert.equal(second.maxSeq, last, 'settled at the last seq handed out, though both transactions are still open');
    } finally {
      await writer.query('ROLLBACK');
      await dumping?.catch(() => undefined);
      await dumper.query('ROLLBACK');
      await Promise.all([writer.release(), dumper.release()]);
    }
    const result = await t.app.get(AuditVerifierService).verify();
    assert.equal(result.ok, true, JSON.stringify(result));
  });

  it('does not wait for a transaction that wrote nothing and waits between statements (a slow export), nor for one that failed', async () => {
    const t = await open();
    const a = await registerUser(t.http);
    const first = await t.app.get(AuditChainService).checkpoint(true);
    assert.ok(first);
    const reader = t.db.createQueryRunner();
    const failed = t.db.createQueryRunner();
    await Promise.all([reader.connect(), failed.connect()]);
    try {
      // A read-only snapshot as an export holds while its client reads; and a transaction whose event was appended, then failed.
      await reader.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      await reader.query('SELECT count(*) FROM audit_events');
      await failed.startTransaction();
      await t.app.get(AuditService).record(failed.manager, { type: 'PROFILE_UPDATED', userId: a.id, metadata: { fields: 'username' } });
      await assert.rejects(failed.query('SELECT 1/0'));
      await login(t.http, a);
      Reflect.set(t.app.get(AuditChainService), 'settleTimeoutMs', 300);
      const second = await t.app.get(AuditChainService).checkpoint(true);
      assert.ok(second);
      const [{ last }] = await t.db.query(`SELECT pg_sequence_last_value(pg_get_serial_sequence('audit_events', 'seq')::regclass)::text AS last`);
      assert.equal(second.maxSeq, last, 'settled at the last seq handed out, though both transactions are still open');
      assert.equal(await recordedHead(t, a.id), await actualHead(t, a.id));
    } finally {
      await reader.query('ROLLBACK');
      await failed.rollbackTransaction();
      await Promise.all([reader.release(), failed.release()]);
    }
    const result = await t.app.get(AuditVerifierService).verify();
    assert.equal(result.ok, true, JSON.stringify(result));
  });

  it('compares every head while events wait to be sealed, and claims no seq then', async () => {
    const t = await open();
    const a = await registerUser(t.http);
    assert.ok(await t.app.get(AuditChainService).checkpoint(true));
    await tamper(t.db, `INSERT INTO audit_chain_seal SELECT max(seq) FROM audit_events`); // as the migration left it (the table refuses it since 0.23.0)
    await login(t.http, a);
    const sealing = await checkpointRecorded(t);
    assert.ok(sealing.checkpoint);
    assert.match(copy(sealing.sent), /FROM audit_chain_heads h LEFT JOIN/);
    assert.equal(sealing.checkpoint.maxSeq, '0');
    await t.app.get(AuditChainService).sealPending(); // nothing to seal: removes the bound
    await login(t.http, a);
    const after = await checkpointRecorded(t);
    assert.ok(after.checkpoint);
    assert.match(copy(after.sent), /WHERE seq > \$1/);
    assert.equal(await recordedHead(t, a.id), await actualHead(t, a.id));
    assert.equal((await t.app.get(AuditVerifierService).verify()).ok, true);
  });

  it('never copies a head set back: a deleted tail stays detected after the next checkpoint, though the chain moved on', async () => {
    const { t, a, recorded } = await checkpointedThenCut();
    // The user logs in again: the chain goes on from the head it was set back to.
    await login(t.http, a);
    assert.equal(await actualHead(t, a.id), recorded - 1);
    assert.ok(await t.app.get(AuditChainService).checkpoint(true));
    assert.equal(await recordedHead(t, a.id), recorded, 'the head behind its recorded position was not copied');
    const result = await t.app.get(AuditVerifierService).verify();
    assert.equal(result.ok, false);
    assert.match(result.reason ?? '', new RegExp(`Chain ${a.id} ends at position ${recorded - 1}, but a checkpoint recorded position ${recorded}`));
  });

  it('records with each head the time of its event, the month where the next checkpoint looks for it first', async () => {
    const t = await open();
    const [a, b] = [await registerUser(t.http), await registerUser(t.http)];
    await login(t.http, a);
    assert.ok(await t.app.get(AuditChainService).checkpoint(true)); // every head compared
    await login(t.http, b);
    assert.ok(await t.app.get(AuditChainService).checkpoint(true)); // the moved ones
    const recorded: Array<{ chain_key: string; matches: boolean }> = await t.db.query(
      `SELECT p.chain_key, e.created_at IS NOT NULL AND e.created_at = p.event_at AS matches
         FROM audit_checkpoint_heads p LEFT JOIN audit_events e ON e.chain_key = p.chain_key AND e.chain_pos = p.position`,
    );
    // Theirs and the global chain's (the signing key ring made at boot).
    assert.deepEqual(recorded.map((r) => r.chain_key).sort(), [a.id, b.id, 'global'].sort());
    // To the microsecond: the time PostgreSQL prunes the months by.
    assert.deepEqual(
      recorded.filter((r) => !r.matches),
      [],
    );
  });

  for (const [hint, eventAt] of [
    ['its recorded time', undefined],
    ['no recorded time (a head recorded before 0.12.1)', null],
    ['the time of the event now at that position', 'now'],
    ['a time changed to one of no event', '2001-01-01T00:00:00Z'],
  ] as const)
    it(`never copies a chain rewritten past its recorded head: its tail deleted, the head set back, and the chain grown again; with ${hint}`, async () => {
      const { t, a, recorded } = await checkpointedThenCut();
      // Failed logins for a's email, which anyone can send, grow the chain past its recorded position again.
      for (let i = 0; i < 3; i++)
        assert.equal((await t.http.post('/api/v1/auth/login').send({ email: a.email, password: 'wrong-password-123' })).status, 401);
      assert.ok((await actualHead(t, a.id)) > recorded);
      // The recorded time only says where to look first: the check looks everywhere when it finds nothing there.
      if (eventAt === 'now')
        await t.db.query(
          `UPDATE audit_checkpoint_heads p SET event_at = e.created_at FROM audit_events e
            WHERE p.chain_key = $1 AND e.chain_key = p.chain_key AND e.chain_pos = p.position`,
          [a.id],
        );
      else if (eventAt !== undefined) await t.db.query(`UPDATE audit_checkpoint_heads SET event_at = $2 WHERE chain_key = $1`, [a.id, eventAt]);
      // The verifier finds the event at the checkpointed position is another one, though the chain goes on past it...
      const reason = new RegExp(`Chain ${a.id}: the event at the checkpointed position ${recorded} is not the one the checkpoint recorded`);
      let result = await t.app.get(AuditVerifierService).verify();
      assert.equal(result.ok, false);
      assert.match(result.reason ?? '', reason);
      // ...and the next checkpoint does not copy the rewritten chain over what was recorded.
      assert.ok(await t.app.get(AuditChainService).checkpoint(true));
      assert.equal(await recordedHead(t, a.id), recorded, 'the rewritten chain was not copied');
      result = await t.app.get(AuditVerifierService).verify();
      assert.equal(result.ok, false);
      assert.match(result.reason ?? '', reason);
    });
});
