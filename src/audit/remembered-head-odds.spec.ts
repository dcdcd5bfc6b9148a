import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RememberedHeadOdds } from './remembered-head-odds';

/** How many observations of one kind it takes for worthTrying() to change. */
function observationsUntilChange(odds: RememberedHeadOdds, current: boolean): number {
  const before = odds.worthTrying();
  for (let n = 1; n <= 1000; n++) {
    odds.observe(current);
    if (odds.worthTrying() !== before) return n;
  }
  return Infinity;
}

describe('RememberedHeadOdds', () => {
  it('tries at first, and keeps trying when an occasional remembered head is stale', () => {
    const odds = new RememberedHeadOdds();
    assert.equal(odds.worthTrying(), true);
    for (let i = 0; i < 500; i++) {
      odds.observe(i % 4 !== 0); // a quarter stale
      assert.equal(odds.worthTrying(), true, `stopped trying after observation ${i + 1}`);
    }
  });

  it('stops trying when most remembered heads are stale (round-robin instances), and tries again once they are current', () => {
    const odds = new RememberedHeadOdds();
    // From full trust, 22 stale heads in a row: 1 * (31/32)^22 < 0.5 <= (31/32)^21.
    assert.equal(observationsUntilChange(odds, false), 22);
    assert.equal(odds.worthTrying(), false);
    for (let i = 0; i < 100; i++) odds.observe(i % 3 === 0); // three instances, round robin: a third current
    assert.equal(odds.worthTrying(), false);
    const back = observationsUntilChange(odds, true);
    assert.ok(back >= 1 && back <= 32, `took ${back} current heads to try again`);
    assert.equal(odds.worthTrying(), true);
  });
});
