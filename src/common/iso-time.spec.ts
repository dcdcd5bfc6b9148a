import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isoTime } from './iso-time';

describe('isoTime', () => {
  it('formats like toISOString, for instants seen before and new ones alike', () => {
    const instants = [0, 1, 1_796_125_719_471, -62_198_755_200_000, 8.64e15, 1_796_125_719_471];
    for (const ms of instants) assert.equal(isoTime(new Date(ms)), new Date(ms).toISOString());
  });

  it('stays right after forgetting: more instants than it remembers', () => {
    const base = Date.UTC(2026, 11, 1);
    for (let i = 0; i < 25_000; i += 1) {
      const date = new Date(base + i * 1000);
      assert.equal(isoTime(date), date.toISOString());
    }
    assert.equal(isoTime(new Date(base)), new Date(base).toISOString());
  });

  it('refuses an invalid date as toISOString does', () => {
    assert.throws(() => isoTime(new Date(Number.NaN)), RangeError);
  });
});
