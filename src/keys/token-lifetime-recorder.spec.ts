import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Logger } from '@nestjs/common';
import { TOKEN_LIFETIME_REFRESH_SECONDS, TokenLifetimeRecorder } from './token-lifetime-recorder';

/** A recorder on a clock the test moves, counting its records; `fail` makes the next ones fail. */
function recorderOnClock() {
  const clock = { ms: 0 };
  const state = { records: 0, fail: false };
  const recorder = new TokenLifetimeRecorder(
    async () => {
      state.records++;
      if (state.fail) throw new Error('the database is unavailable');
    },
    () => clock.ms,
  );
  return { clock, state, recorder };
}

describe('TokenLifetimeRecorder', () => {
  it('records before the first token (awaited), then not again until the refresh time has passed, then in the background', async () => {
    const { clock, state, recorder } = recorderOnClock();
    const first = recorder.beforeIssue();
    assert.ok(first, 'the first token waits for the record');
    assert.ok(recorder.beforeIssue() === first, 'tokens issued meanwhile wait for the same record');
    await first;
    assert.equal(state.records, 1);
    clock.ms += TOKEN_LIFETIME_REFRESH_SECONDS * 1000 - 1;
    assert.equal(recorder.beforeIssue(), undefined);
    assert.equal(state.records, 1, 'nothing written within the refresh time');
    clock.ms += 1;
    assert.equal(recorder.beforeIssue(), undefined, 'a refresh does not hold the token up');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(state.records, 2);
  });

  it('keeps the first token waiting until a record succeeds, and tries a failed refresh again ten seconds later, saying each failure once', async () => {
    const { clock, state, recorder } = recorderOnClock();
    state.fail = true;
    await assert.rejects(recorder.beforeIssue()!, /unavailable/);
    state.fail = false;
    await recorder.beforeIssue();
    assert.equal(state.records, 2);
    clock.ms += TOKEN_LIFETIME_REFRESH_SECONDS * 1000;
    state.fail = true;
    const warned: unknown[] = [];
    Logger.overrideLogger({ log() {}, error() {}, warn: (message: unknown) => void warned.push(message) });
    try {
      assert.equal(recorder.beforeIssue(), undefined);
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      Logger.overrideLogger(false);
    }
    assert.equal(state.records, 3);
    assert.equal(warned.length, 1);
    assert.match(String(warned[0]), /Could not record the access tokens' lifetime \(the database is unavailable\)/);
    state.fail = false;
    clock.ms += 9_999;
    assert.equal(recorder.beforeIssue(), undefined);
    assert.equal(state.records, 3, 'no try within ten seconds of the failure');
    clock.ms += 1;
    void recorder.beforeIssue();
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(state.records, 4, 'a token ten seconds on tries again');
  });
});
