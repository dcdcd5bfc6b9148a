import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { DataSource } from 'typeorm';
import { TypeOrmNestLogger } from '../src/database/typeorm-logger';
import { dataSourceOptions } from '../src/database/data-source.options';
import { DbFingerprint, DbFingerprinter, diffFingerprints } from './helpers/fuzz-db';
import { freshDatabase } from './helpers/test-app';

/**
 * The fuzz test's oracle ("the database exactly as before") digests again only the tables its
 * triggers saw written since the last picture: each kind of write must show, each picture must
 * equal one digested from every table, and a write that leaves the rows as they were must not.
 */
describe('the fuzz test database fingerprints (e2e)', () => {
  let db: DataSource;
  let fingerprints: DbFingerprinter;
  let previous: DbFingerprint;

  /** The tables changed since the last call, after checking the picture against a whole one. */
  async function changed(): Promise<string[]> {
    const now = await fingerprints.take();
    assert.deepEqual(now, await fingerprints.takeWhole());
    const diff = diffFingerprints(previous, now).map((d) => d.slice(0, d.indexOf(':')));
    previous = now;
    return diff;
  }

  before(async () => {
    db = await new DataSource({ ...dataSourceOptions(await freshDatabase()), logging: false, logger: new TypeOrmNestLogger(false) }).initialize();
    fingerprints = new DbFingerprinter(db);
    previous = await fingerprints.take();
    assert.ok(Object.keys(previous.tables).includes('audit_events') && Object.keys(previous.tables).includes('sessions'));
    assert.ok(!Object.keys(previous.tables).some((t) => t.startsWith('fuzz_')), 'its own table is not in the picture');
  });

  after(async () => {
    await db?.destroy();
  });

  it('sees nothing where nothing was written, and nothing from a rolled-back write', async () => {
    assert.deepEqual(await changed(), []);
    await db
      .transaction(async (em) => {
        await em.query(`INSERT INTO rate_limits (key, hits, window_ends_at) VALUES ('rolled-back', 1, now())`);
        throw new Error('roll back');
      })
      .catch(() => undefined);
    assert.deepEqual(await changed(), []);
  });

  it('sees INSERT, UPDATE, DELETE and TRUNCATE on the table written, and only there', async () => {
    await db.query(`INSERT INTO rate_limits (key, hits, window_ends_at) VALUES ('k', 1, now())`);
    assert.deepEqual(await changed(), ['rate_limits']);
    await db.query(`UPDATE rate_limits SET hits = 2`);
    assert.deepEqual(await changed(), ['rate_limits']);
    await db.query(`DELETE FROM rate_limits`);
    assert.deepEqual(await changed(), ['rate_limits']);
    await db.query(`INSERT INTO rate_limits (key, hits, window_ends_at) VALUES ('k', 1, now())`);
    assert.deepEqual(await changed(), ['rate_limits']);
    await db.query(`TRUNCATE rate_limits`);
    assert.deepEqual(await changed(), ['rate_limits']);
  });

  it("ignores a session's activity columns, and sees any other column of it", async () => {
    const [user] = await db.query(`INSERT INTO users (username, email, password_hash) VALUES ('fp', 'fp@example.test', 'x') RETURNING id`);
    const [session] = await db.query(
      `INSERT INTO sessions (user_id, idle_expires_at, absolute_expires_at, refresh_token_hash, refresh_expires_at)
       VALUES ($1, now() + interval '1 hour', now() + interval '1 day', repeat('a', 64), now() + interval '1 day') RETURNING id`,
      [user.id],
    );
    assert.deepEqual((await changed()).sort(), ['sessions', 'users']);
    await db.query(`UPDATE sessions SET last_seen_at = now(), idle_expires_at = idle_expires_at + interval '1 minute' WHERE id = $1`, [session.id]);
    assert.deepEqual(await changed(), []);
    await db.query(`UPDATE sessions SET user_agent = 'changed' WHERE id = $1`, [session.id]);
    assert.deepEqual(await changed(), ['sessions']);
  });

  it('sees an event written to the partitioned table and one written to a partition directly', async () => {
    await db.query(`INSERT INTO audit_events (type) VALUES ('LOGIN_FAILED')`);
    assert.deepEqual(await changed(), ['audit_events']);
    const [{ partition }] = await db.query(`SELECT tableoid::regclass::text AS partition FROM audit_events ORDER BY seq DESC LIMIT 1`);
    await db.query(`INSERT INTO ${partition} (type, seq) VALUES ('LOGIN_FAILED', nextval(pg_get_serial_sequence('audit_events', 'seq')))`);
    assert.deepEqual(await changed(), ['audit_events']);
  });

  it('sees what DDL does: a new table, a dropped one, and a partition detached with its rows', async () => {
    await db.query(`CREATE TABLE fingerprint_extra (x int)`);
    assert.deepEqual(await changed(), ['fingerprint_extra']);
    await db.query(`INSERT INTO fingerprint_extra VALUES (1)`);
    // A table made after the triggers has none of its own: a write to it shows only because
    // every DDL statement makes the next picture a whole one. (No migration runs mid-fuzz.)
    await db.query(`DROP TABLE fingerprint_extra`);
    assert.deepEqual(await changed(), ['fingerprint_extra']);
    const [{ partition }] = await db.query(`SELECT tableoid::regclass::text AS partition FROM audit_events ORDER BY seq DESC LIMIT 1`);
    await db.query(`ALTER TABLE audit_events DETACH PARTITION ${partition}`);
    assert.deepEqual(await changed(), ['audit_events', partition].sort());
  });
});
