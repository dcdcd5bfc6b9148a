import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SessionCache } from './session-cache';
import { SessionChangeListener } from './session-change-listener';

describe('SessionChangeListener.databaseNow', () => {
  it('is not moved by a step of the wall clock (the estimate runs on a monotonic clock until the next measurement)', (t) => {
    // Never started: no connection, an offset of 0.
    const listener = new SessionChangeListener(new SessionCache({ max: 10, ttlMs: 60_000 }), { url: 'postgres://nowhere.invalid/db' });
    const before = listener.databaseNow();
    assert.ok(Math.abs(before - Date.now()) < 1_000, "the estimate starts at this process's clock");
    // The wall clock stepped back an hour (NTP, an operator), then forward two.
    t.mock.timers.enable({ apis: ['Date'], now: Date.now() - 3_600_000 });
    assert.ok(Math.abs(listener.databaseNow() - before) < 1_000, 'a step back moved the estimate');
    t.mock.timers.setTime(Date.now() + 7_200_000);
    assert.ok(Math.abs(listener.databaseNow() - before) < 1_000, 'a step forward moved the estimate');
  });
});
