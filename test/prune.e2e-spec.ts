import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client } from 'pg';
import { deleteInBatches } from '../src/database/batched-delete';
import { LoginThrottleService } from '../src/login-throttle/login-throttle.service';
import { RateLimitPruneTask } from '../src/rate-limit/rate-limit-prune.task';
import { metric } from './helpers/service-process';
import { createTestApp, TestApp } from './helpers/test-app';

/** Counters of this file's own (the app's own requests count under other keys). */
const PREFIX = 'prune-test:';

const FINISHED = {
  table: 'rate_limits',
  orderBy: 'window_ends_at',
  where: `key LIKE '${PREFIX}%' AND window_ends_at < now() AND (blocked_until IS NULL OR blocked_until < now())`,
};

describe('pruning counters in batches (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => {
    await t.close();
  });

  /** `n` rate-limit counters `name:1`…, their windows ended `endedAgo` ago (ahead if negative), blocked for `blockedFor` more if given. */
  async function counters(name: string, n: number, endedAgo: string, blockedFor: string | null = null): Promise<void> {
    await t.db.query(
      `INSERT INTO rate_limits (key, hits, window_ends_at, blocked_until)
       SELECT $1 || i, 1, now() - $3::interval, now() + $4::interval FROM generate_series(1, $2) AS i`,
      [`${PREFIX}${name}:`, n, endedAgo, blockedFor],
    );
  }

  async function left(name: string): Promise<number> {
    const [{ n }] = await t.db.query(`SELECT count(*)::int AS n FROM rate_limits WHERE key LIKE $1`, [`${PREFIX}${name}:%`]);
    return n;
  }

  async function clear(): Promise<void> {
    await t.db.query(`DELETE FROM rate_limits WHERE key LIKE $1`, [`${PREFIX}%`]);
  }

  it('deletes exactly the finished counters over many batches, walking past blocked ones and ties at a batch boundary', async () => {
    await clear();
    // Blocked counters whose windows ended first, at the start of the index range the batches
    // walk: kept, while the finished ones after them go. (That the batches pass them once instead
    // of rescanning them is a matter of speed, measured in the README, not asserted here.)
    await counters('blocked', 40, '2 hours', '1 hour');
    await counters('finished', 1234, '1 hour');
    // 250 rows with one window_ends_at, more than a batch: the next batch starts at that same
    // position (inclusive) and must not skip the rest of them.
    await t.db.query(
      `INSERT INTO rate_limits (key, hits, window_ends_at)
       SELECT $1 || i, 1, date_trunc('second', now()) - interval '30 minutes' FROM generate_series(1, 250) AS i`,
      [`${PREFIX}tied:`],
    );
    await counters('current', 30, '-10 minutes');

    const deleted = await deleteInBatches(t.db.manager, FINISHED, { batchSize: 100, budgetMs: 60_000 });

    assert.equal(deleted, 1234 + 250);
    assert.equal(await left('finished'), 0);
    assert.equal(await left('tied'), 0);
    assert.equal(await left('blocked'), 40);
    assert.equal(await left('current'), 30);
  });

  it('runs one batch only once its budget is spent, or once it is stopped while under way (as at shutdown); none once stopped before it starts', async () => {
    await clear();
    await counters('finished', 500, '1 hour');

    assert.equal(await deleteInBatches(t.db.manager, FINISHED, { batchSize: 100, budgetMs: 0 }), 100);
    // Stopped once its first batch is under way: it finishes that one and starts no other.
    let looks = 0;
    const stoppedDuring = {
      get aborted() {
        return looks++ > 0;
      },
    } as AbortSignal;
    assert.equal(await deleteInBatches(t.db.manager, FINISHED, { batchSize: 100, budgetMs: 60_000, stop: stoppedDuring }), 100);
    assert.equal(await left('finished'), 300);
    // Stopped before it starts (a tick the scheduler fired after the shutdown's stop): nothing,
    // where until 0.27.0 it ran one batch, against a pool about to close.
    const stopped = new AbortController();
    stopped.abort();
    assert.equal(await deleteInBatches(t.db.manager, FINISHED, { batchSize: 100, budgetMs: 60_000, stop: stopped.signal }), 0);
    assert.equal(await left('finished'), 300);
  });

  it('leaves a counter another transaction holds for the next run instead of waiting for it', async () => {
    await clear();
    await counters('finished', 300, '1 hour');
    const other = new Client({ connectionString: t.config.DATABASE_URL });
    await other.connect();
    try {
      await other.query('BEGIN');
      await other.query(`SELECT 1 FROM rate_limits WHERE key = $1 FOR UPDATE`, [`${PREFIX}finished:7`]);
      // The lock would make a plain DELETE wait: the pool's statement timeout bounds that, not this test.
      assert.equal(await deleteInBatches(t.db.manager, FINISHED, { batchSize: 100, budgetMs: 60_000 }), 299);
      await other.query('ROLLBACK');
    } finally {
      await other.end();
    }
    assert.equal(await deleteInBatches(t.db.manager, FINISHED, { batchSize: 100, budgetMs: 60_000 }), 1);
    assert.equal(await left('finished'), 0);
  });

  it('splits the rows between instances pruning at the same time: every row deleted once, none waited for', async () => {
    await clear();
    await counters('finished', 3000, '1 hour');
    const instances = await Promise.all([0, 1, 2].map(() => deleteInBatches(t.db.manager, FINISHED, { batchSize: 100, budgetMs: 60_000 })));
    assert.equal(
      instances.reduce((a, b) => a + b, 0),
      3000,
    );
    assert.equal(await left('finished'), 0);
  });

  it('the rate-limit prune job deletes finished counters and keeps blocked and current ones', async () => {
    await clear();
    await counters('finished', 1500, '1 hour');
    await counters('blocked', 10, '1 hour', '1 hour');
    await counters('current', 10, '-5 minutes');
    const scrape = async () => metric((await t.http.get('/metrics')).text, 'sessionary_pruned_rows_total{table="rate_limits"}');
    const before = await scrape();
    const deleted = await t.app.get(RateLimitPruneTask).prune();
    // The app's own finished counters (other keys) may be deleted with them.
    assert.ok(deleted >= 1500, String(deleted));
    assert.equal(await left('finished'), 0);
    assert.equal(await left('blocked'), 10);
    assert.equal(await left('current'), 10);
    assert.equal((await scrape()) - before, deleted);
  });

  it('the login prune forgets counters quiet for a whole window and clients unseen for 30 days, and nothing else', async () => {
    const window = t.config.LOGIN_FAILURE_WINDOW;
    // The keys are hashes, as the service stores them: of $1 || i for i in 1..$2.
    const keys = `SELECT encode(sha256(convert_to($1 || i, 'UTF8')), 'hex') AS key FROM generate_series(1, $2) AS i`;
    await t.db.query(
      `INSERT INTO login_throttle (key, failures, last_failure_at) SELECT key, 3, now() - make_interval(secs => $3 + 60) FROM (${keys}) k`,
      ['prune-quiet:', 2100, window],
    );
    await t.db.query(
      `INSERT INTO login_throttle (key, failures, last_failure_at, locked_until) SELECT key, 9, now(), now() + interval '1 minute' FROM (${keys}) k`,
      ['prune-recent:', 20],
    );
    // A back-off at its cap ended a minute ago, its failure older than a window: not quiet yet (until 0.25.0 pruned, and the count started again).
    await t.db.query(
      `INSERT INTO login_throttle (key, failures, last_failure_at, locked_until)
       SELECT key, 9, now() - make_interval(secs => $3 + 60), now() - interval '1 minute' FROM (${keys}) k`,
      ['prune-capped:', 20, window],
    );
    await t.db.query(`INSERT INTO login_known_clients (key, last_success_at) SELECT key, now() - interval '31 days' FROM (${keys}) k`, [
      'prune-gone:',
      1500,
    ]);
    await t.db.query(`INSERT INTO login_known_clients (key, last_success_at) SELECT key, now() - interval '29 days' FROM (${keys}) k`, [
      'prune-seen:',
      20,
    ]);
    const count = async (table: string, name: string, n: number) => {
      const [{ c }] = await t.db.query(`SELECT count(*)::int AS c FROM ${table} WHERE key IN (SELECT key FROM (${keys}) k)`, [name, n]);
      return c;
    };

    const scrape = async () => {
      const text = (await t.http.get('/metrics')).text;
      return ['login_throttle', 'login_known_clients'].map((table) => metric(text, `sessionary_pruned_rows_total{table="${table}"}`));
    };
    const before = await scrape();
    const deleted = await t.app.get(LoginThrottleService).prune();

    assert.ok(deleted >= 2100, String(deleted));
    assert.equal(await count('login_throttle', 'prune-quiet:', 2100), 0);
    assert.equal(await count('login_throttle', 'prune-recent:', 20), 20);
    assert.equal(await count('login_throttle', 'prune-capped:', 20), 20);
    assert.equal(await count('login_known_clients', 'prune-gone:', 1500), 0);
    assert.equal(await count('login_known_clients', 'prune-seen:', 20), 20);
    const [counters, clients] = (await scrape()).map((n, i) => n - before[i]);
    assert.equal(counters, deleted);
    assert.ok(clients >= 1500, String(clients));
  });
});
