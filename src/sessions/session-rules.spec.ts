import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { CachedSession } from './session-cache';
import { expiryReason, judgeCachedSession, judgeSession, SessionState, touchIntervalMs } from './session-rules';

const T0 = Date.parse('2025-01-01T12:00:00.000Z');
const at = (ms: number) => new Date(T0 + ms);
const SECOND = 1000;
const MINUTE = 60 * SECOND;
const INTERVAL = 60_000;

/** A session last seen at T0, judged at T0 + 10 s, with distant deadlines unless overridden. */
function state(overrides: Partial<SessionState> = {}): SessionState {
  return {
    endedAt: null,
    lastSeenAt: at(0),
    now: at(10 * SECOND),
    idleExpiresAt: at(60 * MINUTE),
    absoluteExpiresAt: at(24 * 60 * MINUTE),
    ...overrides,
  };
}

describe('judgeSession', () => {
  it('says ended for an ended session, even one that is otherwise active', () => {
    assert.deepEqual(judgeSession(state({ endedAt: at(5 * SECOND) }), INTERVAL), { status: 'ended' });
  });

  it('says ended (not expired) for an ended session whose deadlines have also passed', () => {
    const s = state({ endedAt: at(0), now: at(48 * 60 * MINUTE) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'ended' });
  });

  it('says expired/idle_timeout once the idle deadline has passed', () => {
    const s = state({ idleExpiresAt: at(5 * SECOND), now: at(6 * SECOND) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'expired', reason: 'idle_timeout' });
  });

  it('says expired/idle_timeout exactly at the idle deadline', () => {
    const s = state({ idleExpiresAt: at(10 * SECOND), now: at(10 * SECOND) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'expired', reason: 'idle_timeout' });
  });

  it('is still active one millisecond before the idle deadline', () => {
    const s = state({ idleExpiresAt: at(10 * SECOND + 1), now: at(10 * SECOND) });
    assert.equal(judgeSession(s, INTERVAL).status, 'active');
  });

  it('says expired/absolute_timeout once the absolute deadline has passed (idle still ahead)', () => {
    const s = state({ idleExpiresAt: at(30 * MINUTE), absoluteExpiresAt: at(5 * SECOND), now: at(6 * SECOND) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'expired', reason: 'absolute_timeout' });
  });

  it('says expired/absolute_timeout exactly at the absolute deadline', () => {
    const s = state({ absoluteExpiresAt: at(10 * SECOND), now: at(10 * SECOND) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'expired', reason: 'absolute_timeout' });
  });

  it('says expired/absolute_timeout when the idle deadline was capped at the absolute one and it passed', () => {
    const s = state({ idleExpiresAt: at(5 * SECOND), absoluteExpiresAt: at(5 * SECOND), now: at(6 * SECOND) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'expired', reason: 'absolute_timeout' });
  });

  it('says expired/idle_timeout when both passed but the idle deadline came first', () => {
    const s = state({ idleExpiresAt: at(2 * SECOND), absoluteExpiresAt: at(5 * SECOND), now: at(6 * SECOND) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'expired', reason: 'idle_timeout' });
  });

  it('is active without a touch just under the touch interval since last seen', () => {
    const s = state({ lastSeenAt: at(0), now: at(INTERVAL - 1) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'active', touch: false });
  });

  it('is active with a touch exactly at the touch interval since last seen', () => {
    const s = state({ lastSeenAt: at(0), now: at(INTERVAL) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'active', touch: true });
  });

  it('is active with a touch well past the touch interval', () => {
    const s = state({ lastSeenAt: at(0), now: at(5 * INTERVAL) });
    assert.deepEqual(judgeSession(s, INTERVAL), { status: 'active', touch: true });
  });

  it('uses the interval it is given', () => {
    const s = state({ lastSeenAt: at(0), now: at(150) });
    assert.deepEqual(judgeSession(s, 100), { status: 'active', touch: true });
    assert.deepEqual(judgeSession(s, 200), { status: 'active', touch: false });
  });
});

describe('expiryReason', () => {
  it('is idle_timeout when the idle deadline is before the absolute one', () => {
    assert.equal(expiryReason(at(0), at(1)), 'idle_timeout');
  });

  it('is absolute_timeout when the two deadlines are equal', () => {
    assert.equal(expiryReason(at(1000), at(1000)), 'absolute_timeout');
  });

  it('is absolute_timeout when the idle deadline is after the absolute one', () => {
    assert.equal(expiryReason(at(2000), at(1000)), 'absolute_timeout');
  });
});

describe('touchIntervalMs', () => {
  it('is capped at a minute (idle 3600 s -> 60000 ms)', () => {
    assert.equal(touchIntervalMs(3600), 60_000);
  });

  it('is a tenth of a short idle timeout (idle 1 s -> 100 ms)', () => {
    assert.equal(touchIntervalMs(1), 100);
  });

  it('reaches the cap exactly at idle 600 s and is a tenth below it (300 s -> 30000 ms)', () => {
    assert.equal(touchIntervalMs(600), 60_000);
    assert.equal(touchIntervalMs(300), 30_000);
  });
});

describe('touchIntervalMs with SESSION_TOUCH_INTERVAL', () => {
  it('uses the configured seconds when set', () => {
    assert.equal(touchIntervalMs(3600, 5), 5_000);
  });
});

describe('judgeCachedSession', () => {
  const USER = 'u1';
  const cached = (overrides: Partial<CachedSession> = {}): CachedSession => ({
    userId: USER,
    role: 'user',
    ended: false,
    idleExpiresAt: T0 + 60 * MINUTE,
    absoluteExpiresAt: T0 + 24 * 60 * MINUTE,
    lastSeenAt: T0,
    ...overrides,
  });

  it('is active with both deadlines beyond the margin', () => {
    assert.equal(judgeCachedSession(cached(), USER, T0, 1000), 'active');
  });

  it("refuses an ended session and someone else's without asking the database", () => {
    assert.equal(judgeCachedSession(cached({ ended: true }), USER, T0, 1000), 'refused');
    assert.equal(judgeCachedSession(cached(), 'u2', T0, 1000), 'refused');
  });

  it('asks the database once the idle deadline is within the margin', () => {
    const s = cached({ idleExpiresAt: T0 + 1000 });
    assert.equal(judgeCachedSession(s, USER, T0 - 1, 1000), 'active');
    assert.equal(judgeCachedSession(s, USER, T0, 1000), 'recheck');
    assert.equal(judgeCachedSession(s, USER, T0 + 5 * MINUTE, 1000), 'recheck');
  });

  it('asks the database once the absolute deadline is within the margin', () => {
    const s = cached({ absoluteExpiresAt: T0 + 1000 });
    assert.equal(judgeCachedSession(s, USER, T0 - 1, 1000), 'active');
    assert.equal(judgeCachedSession(s, USER, T0, 1000), 'recheck');
  });
});
