import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CachedSession, SessionCache } from './session-cache';

const SID = '00000000-0000-4000-8000-000000000001';
const OTHER = '00000000-0000-4000-8000-000000000002';
const USER = '00000000-0000-4000-8000-0000000000aa';

function entry(overrides: Partial<CachedSession> = {}): CachedSession {
  return { userId: USER, role: 'user', ended: false, idleExpiresAt: 2_000, absoluteExpiresAt: 9_000, lastSeenAt: 1_000, ...overrides };
}

function trustedCache(max = 10): SessionCache {
  const cache = new SessionCache({ max, ttlMs: 60_000 });
  cache.trust();
  return cache;
}

describe('SessionCache', () => {
  it('answers nothing until a listening connection makes it trusted', () => {
    const cache = new SessionCache({ max: 10, ttlMs: 60_000 });
    assert.equal(cache.completeFill(cache.beginFill(SID), entry()), false);
    assert.equal(cache.get(SID), undefined);
    cache.trust();
    assert.equal(cache.completeFill(cache.beginFill(SID), entry()), true);
    assert.deepEqual(cache.get(SID), entry());
  });

  it('does not store a fill that an invalidation overtook (the NOTIFY wins)', () => {
    const cache = trustedCache();
    const ticket = cache.beginFill(SID);
    cache.applyNotification(`s:${SID}`);
    assert.equal(cache.completeFill(ticket, entry()), false);
    assert.equal(cache.get(SID), undefined);
  });

  it('an invalidation of another session does not void a fill', () => {
    const cache = trustedCache();
    const ticket = cache.beginFill(SID);
    cache.applyNotification(`s:${OTHER}`);
    assert.equal(cache.completeFill(ticket, entry()), true);
  });

  it('a role change removes every entry of that user and voids every fill in flight', () => {
    const cache = trustedCache();
    cache.completeFill(cache.beginFill(SID), entry());
    cache.completeFill(cache.beginFill(OTHER), entry({ userId: 'someone-else' }));
    const inFlight = cache.beginFill('00000000-0000-4000-8000-000000000003');
    cache.applyNotification(`u:${USER}`);
    assert.equal(cache.get(SID), undefined);
    assert.ok(cache.get(OTHER));
    assert.equal(cache.completeFill(inFlight, entry()), false);
  });

  it('losing the listener empties the cache, voids fills in flight and answers nothing until trusted again', () => {
    const cache = trustedCache();
    cache.completeFill(cache.beginFill(SID), entry());
    const inFlight = cache.beginFill(OTHER);
    cache.distrust();
    assert.equal(cache.trusted, false);
    assert.equal(cache.size, 0);
    cache.trust();
    // The fill began before the flush: what it read may predate a change that was never notified.
    assert.equal(cache.completeFill(inFlight, entry()), false);
    assert.equal(cache.get(SID), undefined);
  });

  it("'*' and payloads it does not understand flush everything", () => {
    for (const payload of ['*', 'x:whatever', '']) {
      const cache = trustedCache();
      cache.completeFill(cache.beginFill(SID), entry());
      cache.applyNotification(payload);
      assert.equal(cache.size, 0, payload);
    }
  });

  it('extends deadlines from its own writes, never earlier, never for an ended session', () => {
    const cache = trustedCache();
    cache.completeFill(cache.beginFill(SID), entry());
    cache.extend(SID, 5_000, 3_000);
    assert.equal(cache.get(SID)!.idleExpiresAt, 5_000);
    assert.equal(cache.get(SID)!.lastSeenAt, 3_000);
    cache.extend(SID, 4_000, 2_000);
    assert.equal(cache.get(SID)!.idleExpiresAt, 5_000);
    cache.completeFill(cache.beginFill(OTHER), entry({ ended: true }));
    cache.extend(OTHER, 5_000, 3_000);
    assert.equal(cache.get(OTHER)!.idleExpiresAt, 2_000);
  });

  it("applies its own write's deadlines only to sessions no invalidation reached while the write was on its way", () => {
    const cache = trustedCache();
    cache.completeFill(cache.beginFill(SID), entry());
    cache.completeFill(cache.beginFill(OTHER), entry());
    const [mine, other] = cache.beginWrite([SID, OTHER]);
    // SID's deadline moved earlier meanwhile (say an operator's UPDATE): notified, then read afresh.
    cache.applyNotification(`s:${SID}`);
    cache.completeFill(cache.beginFill(SID), entry({ idleExpiresAt: 1_500 }));
    cache.completeWrite(mine, { idleExpiresAt: 5_000, lastSeenAt: 3_000 });
    assert.equal(cache.get(SID)!.idleExpiresAt, 1_500, 'the entry read afresh keeps the stored deadline');
    cache.completeWrite(other, { idleExpiresAt: 5_000, lastSeenAt: 3_000 });
    assert.equal(cache.get(OTHER)!.idleExpiresAt, 5_000, 'untouched meanwhile: the write applies');
    // A flush (the listening connection lost and back) voids a write in flight too.
    const [afterFlush] = cache.beginWrite([OTHER]);
    cache.flush();
    cache.completeFill(cache.beginFill(OTHER), entry());
    cache.completeWrite(afterFlush, { idleExpiresAt: 9_000, lastSeenAt: 4_000 });
    assert.equal(cache.get(OTHER)!.idleExpiresAt, 2_000);
    // A failed write (no result) changes nothing, and no ticket is left behind.
    const [failed] = cache.beginWrite([OTHER]);
    cache.completeWrite(failed, undefined);
    assert.equal(cache.get(OTHER)!.idleExpiresAt, 2_000);
    assert.equal((cache as unknown as { fills: Map<string, unknown> }).fills.size, 0);
  });

  it('is bounded: beyond max the least recently used entry goes', () => {
    const cache = trustedCache(2);
    for (const id of ['a', 'b']) cache.completeFill(cache.beginFill(id), entry());
    cache.get('a');
    cache.completeFill(cache.beginFill('c'), entry());
    assert.ok(cache.get('a'));
    assert.equal(cache.get('b'), undefined);
    assert.ok(cache.get('c'));
  });

  it('entries expire after the TTL (the safety net)', async () => {
    const cache = new SessionCache({ max: 10, ttlMs: 20 });
    cache.trust();
    cache.completeFill(cache.beginFill(SID), entry());
    assert.ok(cache.get(SID));
    await new Promise((r) => setTimeout(r, 40));
    assert.equal(cache.get(SID), undefined);
  });

  it('with max 0 it is off: nothing is ever stored', () => {
    const cache = new SessionCache({ max: 0, ttlMs: 60_000 });
    cache.trust();
    assert.equal(cache.enabled, false);
    assert.equal(cache.completeFill(cache.beginFill(SID), entry()), false);
    assert.equal(cache.get(SID), undefined);
  });
});
