import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CounterSettings, RateLimitCounters, SyncBatch, SyncedRow } from './rate-limit-counters';

const SETTINGS: CounterSettings = { ttl: 60_000, limit: 3, blockDuration: 30_000 };

function counters(maxKeys = 1000): { c: RateLimitCounters; clock: { now: number } } {
  const clock = { now: 1_000_000 };
  return { c: new RateLimitCounters({ maxKeys, now: () => clock.now }), clock };
}

/** The one batch of a single-settings run. */
function take(c: RateLimitCounters): SyncBatch {
  const batches = c.takeBatches();
  assert.equal(batches.length, 1);
  return batches[0];
}

const hitsOf = (batch: SyncBatch) => Object.fromEntries(batch.entries.map((e) => [e.key, e.hits]));

/**
 * What the upsert in pg-throttler.storage.ts does, on one clock, for simulations: a batch's
 * hits added at once, the window rolled over and the block set exactly like one hit at a time.
 */
class FakeTable {
  private readonly rows = new Map<string, { hits: number; windowEndsAt: number; blockedUntil: number }>();
  constructor(private readonly clock: { now: number }) {}

  merge(batch: SyncBatch): SyncedRow[] {
    const now = this.clock.now;
    const { ttl, limit, blockDuration } = batch.settings;
    return batch.entries.map(({ key, hits, windowStartedAt }) => {
      const windowAgeMs = Math.max(0, now - windowStartedAt);
      const old = this.rows.get(key);
      const fresh = !old || old.windowEndsAt <= now;
      const total = fresh ? hits : old.hits + hits;
      const blockedUntil = old && old.blockedUntil > now ? old.blockedUntil : total > limit ? now + blockDuration : 0;
      const row = { hits: total, windowEndsAt: fresh ? now - windowAgeMs + ttl : old.windowEndsAt, blockedUntil };
      this.rows.set(key, row);
      return { key, hits: row.hits, windowMs: row.windowEndsAt - now, blockedMs: Math.max(0, row.blockedUntil - now) };
    });
  }

  hits(key: string): number {
    return this.rows.get(key)?.hits ?? 0;
  }
}

describe('RateLimitCounters', () => {
  it("sends with a key's hits how long ago their window began, so that the database's window begins at the first hit, not at the sync", () => {
    const { c, clock } = counters();
    c.hit('ip', SETTINGS);
    clock.now += 900;
    c.hit('ip', SETTINGS);
    const batch = take(c);
    // As its statement goes out: later than the batch was taken, when other batches went first.
    clock.now += 300;
    assert.deepEqual(c.windowAgesMs(batch), [1200]);
  });

  it('never refuses a client steady under the limit, however long the sync interval (each window holds ttl of hits, not ttl and an interval)', () => {
    const { c, clock } = counters();
    const table = new FakeTable(clock);
    // 60 a minute allowed; one hit every 1.05 s is at most 58 in any minute. Synced every 10 s:
    // until 0.29.0 each window began at a sync, up to 10 s after its first hit, and held 66.
    const settings = { ttl: 60_000, limit: 60, blockDuration: 60_000 };
    let nextSync = clock.now + 10_000;
    for (let i = 0; i < 300; i++) {
      assert.equal(c.hit('steady', settings).isBlocked, false, `hit ${i}`);
      clock.now += 1050;
      if (clock.now >= nextSync) {
        for (const batch of c.takeBatches()) c.applySynced(batch, table.merge(batch));
        nextSync += 10_000;
      }
    }
  });

  it('counts hits in a window and blocks the hit beyond the limit for blockDuration', () => {
    const { c } = counters();
    const seen = [1, 2, 3, 4].map(() => c.hit('ip', SETTINGS));
    assert.deepEqual(
      seen.map((d) => d.totalHits),
      [1, 2, 3, 4],
    );
    assert.deepEqual(
      seen.map((d) => d.isBlocked),
      [false, false, false, true],
    );
    assert.equal(seen[0].timeToExpire, 60);
    assert.equal(seen[0].timeToBlockExpire, 0);
    assert.equal(seen[3].timeToBlockExpire, 30);
  });

  it('keeps counting hits while blocked, and does not extend the block with them', () => {
    const { c, clock } = counters();
    for (let i = 0; i < 4; i++) c.hit('ip', SETTINGS);
    clock.now += 10_000;
    const during = c.hit('ip', SETTINGS);
    assert.equal(during.totalHits, 5);
    assert.equal(during.isBlocked, true);
    assert.equal(during.timeToBlockExpire, 20);
  });

  it('starts a new window after ttl, while a block outlasts its window', () => {
    const { c, clock } = counters();
    const long = { ...SETTINGS, blockDuration: 90_000 };
    for (let i = 0; i < 4; i++) c.hit('ip', long);
    clock.now += 60_000;
    const next = c.hit('ip', long);
    assert.equal(next.totalHits, 1);
    assert.equal(next.isBlocked, true);
    assert.equal(next.timeToBlockExpire, 30);
    clock.now += 30_000;
    assert.equal(c.hit('ip', long).isBlocked, false);
  });

  it('keeps keys apart', () => {
    const { c } = counters();
    for (let i = 0; i < 4; i++) c.hit('a', SETTINGS);
    assert.equal(c.hit('b', SETTINGS).totalHits, 1);
    assert.equal(c.hit('b', SETTINGS).isBlocked, false);
  });

  it('hands each hit to exactly one sync', () => {
    const { c } = counters();
    c.hit('a', SETTINGS);
    c.hit('a', SETTINGS);
    c.hit('b', SETTINGS);
    const first = take(c);
    assert.deepEqual(first.settings, SETTINGS);
    assert.deepEqual(hitsOf(first), { a: 2, b: 1 });
    c.applySynced(first, [
      { key: 'a', hits: 2, windowMs: 60_000, blockedMs: 0 },
      { key: 'b', hits: 1, windowMs: 60_000, blockedMs: 0 },
    ]);
    assert.deepEqual(c.takeBatches(), []);
    c.hit('b', SETTINGS);
    assert.deepEqual(hitsOf(take(c)), { b: 1 });
  });

  it('groups keys by their settings, one batch each', () => {
    const { c } = counters();
    c.hit('a', SETTINGS);
    c.hit('b', { ...SETTINGS, limit: 10 });
    const batches = c.takeBatches();
    assert.deepEqual(
      batches.map((b) => [b.settings.limit, hitsOf(b)]),
      [
        [3, { a: 1 }],
        [10, { b: 1 }],
      ],
    );
  });

  it('decides from the global total of the last sync plus the hits seen here since', () => {
    const { c } = counters();
    const limit10 = { ...SETTINGS, limit: 10 };
    c.hit('ip', limit10);
    const batch = take(c);
    // Seen here while the sync runs: counted, and sent next time.
    c.hit('ip', limit10);
    // Other instances had 7 hits: the database holds 8 with ours.
    c.applySynced(batch, [{ key: 'ip', hits: 8, windowMs: 50_000, blockedMs: 0 }]);
    const next = c.hit('ip', limit10);
    assert.equal(next.totalHits, 10);
    assert.equal(next.timeToExpire, 50);
    assert.equal(next.isBlocked, false);
    assert.equal(c.hit('ip', limit10).isBlocked, true);
    assert.deepEqual(hitsOf(take(c)), { ip: 3 });
  });

  it('holds a key the sync reports blocked until the database says, whatever it counted here', () => {
    const { c, clock } = counters();
    c.hit('ip', SETTINGS);
    c.applySynced(take(c), [{ key: 'ip', hits: 9, windowMs: 40_000, blockedMs: 45_000 }]);
    clock.now += 44_000;
    // The window is over here (a new one starts), the block is not.
    const held = c.hit('ip', SETTINGS);
    assert.equal(held.isBlocked, true);
    assert.equal(held.totalHits, 1);
    assert.equal(held.timeToBlockExpire, 1);
    clock.now += 1_000;
    assert.equal(c.hit('ip', SETTINGS).isBlocked, false);
  });

  it('keeps a longer block decided here when the sync reports none', () => {
    const { c, clock } = counters();
    for (let i = 0; i < 4; i++) c.hit('ip', SETTINGS);
    // The database's window ends in a second and it knows no block.
    c.applySynced(take(c), [{ key: 'ip', hits: 4, windowMs: 1_000, blockedMs: 0 }]);
    clock.now += 2_000;
    // A new window, one hit: only the block decided here (30 s from the fourth hit) refuses it.
    const held = c.hit('ip', SETTINGS);
    assert.equal(held.totalHits, 1);
    assert.equal(held.isBlocked, true);
    assert.equal(held.timeToBlockExpire, 28);
  });

  it("gives a failed sync's hits to the next sync and keeps deciding with them", () => {
    const { c } = counters();
    c.hit('ip', SETTINGS);
    c.hit('ip', SETTINGS);
    const batch = take(c);
    c.hit('ip', SETTINGS);
    c.syncFailed(batch);
    assert.deepEqual(hitsOf(take(c)), { ip: 3 });
    assert.equal(c.hit('ip', SETTINGS).totalHits, 4);
  });

  it("drops a failed sync's hits whose window has ended meanwhile", () => {
    const { c, clock } = counters();
    c.hit('ip', SETTINGS);
    c.hit('ip', SETTINGS);
    const batch = take(c);
    clock.now += 60_000;
    assert.equal(c.hit('ip', SETTINGS).totalHits, 1);
    c.syncFailed(batch);
    assert.equal(c.hit('ip', SETTINGS).totalHits, 2);
    assert.deepEqual(hitsOf(take(c)), { ip: 2 });
  });

  it('after a roll-over during a sync, trusts the database about the window', () => {
    const { c, clock } = counters();
    c.hit('ip', SETTINGS);
    const batch = take(c);
    clock.now += 60_000;
    c.hit('ip', SETTINGS);
    // The database's window was not over yet (it started later): our hit counts there.
    c.applySynced(batch, [{ key: 'ip', hits: 2, windowMs: 500, blockedMs: 0 }]);
    const next = c.hit('ip', SETTINGS);
    assert.equal(next.totalHits, 4);
    assert.equal(next.isBlocked, true);
  });

  it('sweeps keys whose window and block are over, and only those', () => {
    const { c, clock } = counters();
    const longBlock = { ...SETTINGS, blockDuration: 120_000 };
    c.hit('quiet', longBlock);
    for (let i = 0; i < 4; i++) c.hit('blocked', longBlock);
    const batch = take(c);
    c.hit('unsynced', longBlock);
    clock.now += 60_000;
    c.sweep();
    // unsynced: its hits belong to the window that ended; quiet: in flight until its sync is back.
    assert.equal(c.size, 2);
    c.syncFailed(batch);
    c.sweep();
    assert.equal(c.size, 1);
    assert.equal(c.hit('blocked', SETTINGS).isBlocked, true);
    assert.equal(c.hit('quiet', SETTINGS).totalHits, 1);
    assert.deepEqual(hitsOf(take(c)), { blocked: 1, quiet: 1 });
  });

  it('never holds more than maxKeys, forgetting the oldest window first', () => {
    const { c, clock } = counters(3);
    for (const key of ['a', 'b', 'c']) {
      c.hit(key, SETTINGS);
      clock.now += 1;
    }
    c.hit('a', SETTINGS);
    for (let i = 0; i < 1000; i++) c.hit(`flood-${i}`, SETTINGS);
    assert.equal(c.size, 3);
    assert.equal(c.hit('a', SETTINGS).totalHits, 1, 'a was forgotten');
  });

  it('after a roll-over re-orders a key as the newest', () => {
    const { c, clock } = counters(2);
    c.hit('a', SETTINGS);
    c.hit('b', SETTINGS);
    clock.now += 60_000;
    c.hit('a', SETTINGS);
    c.hit('a', SETTINGS);
    c.hit('new', SETTINGS); // evicts b, whose window is the oldest
    assert.equal(c.hit('a', SETTINGS).totalHits, 3);
  });

  it("does not let an evicted key's sync answer touch its successor", () => {
    const { c } = counters(1);
    c.hit('a', SETTINGS);
    const batch = take(c);
    c.hit('b', SETTINGS); // evicts a
    c.hit('a', SETTINGS); // evicts b; a is new
    c.applySynced(batch, [{ key: 'a', hits: 50, windowMs: 60_000, blockedMs: 60_000 }]);
    const again = c.hit('a', SETTINGS);
    assert.equal(again.totalHits, 2);
    assert.equal(again.isBlocked, false);
    assert.deepEqual(hitsOf(take(c)), { a: 2 });
  });

  for (const instances of [2, 3, 5]) {
    for (const perInterval of [1, 4, 13]) {
      it(`${instances} instances syncing every ${perInterval} requests each admit at most limit + ${instances * perInterval} in a window`, () => {
        const clock = { now: 0 };
        const table = new FakeTable(clock);
        const fleet = Array.from({ length: instances }, () => new RateLimitCounters({ maxKeys: 10, now: () => clock.now }));
        const limit = { ttl: 60_000, limit: 50, blockDuration: 60_000 };
        let admitted = 0;
        for (let round = 0; round < 40; round++) {
          for (let i = 0; i < perInterval; i++) {
            for (const c of fleet) {
              clock.now += 1;
              if (!c.hit('ip', limit).isBlocked) admitted++;
            }
          }
          // The instances sync one after the other, in the same interval.
          for (const c of fleet) for (const batch of c.takeBatches()) c.applySynced(batch, table.merge(batch));
        }
        assert.ok(admitted >= 50, `admitted ${admitted}`);
        assert.ok(admitted <= 50 + instances * perInterval, `admitted ${admitted}`);
        assert.equal(table.hits('ip'), 40 * perInterval * instances, 'every hit reached the table');
        for (const c of fleet) assert.equal(c.hit('ip', limit).isBlocked, true);
      });
    }
  }
});
