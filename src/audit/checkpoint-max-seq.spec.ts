import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { checkpointMaxSeq } from './checkpoint-max-seq';

describe('checkpointMaxSeq', () => {
  it('states the settled seq when it is past the last checkpoint’s', () => {
    assert.equal(checkpointMaxSeq(false, '150', '100'), '150');
    // Compared as numbers, not text ('99' sorts after '100').
    assert.equal(checkpointMaxSeq(false, '100', '99'), '100');
    assert.equal(checkpointMaxSeq(false, '12345678901234567890', '9'), '12345678901234567890');
  });

  it('never goes below the last checkpoint’s (settled earlier than another instance’s checkpoint, or not settled)', () => {
    assert.equal(checkpointMaxSeq(false, '100', '150'), '150');
    assert.equal(checkpointMaxSeq(false, null, '150'), '150');
    assert.equal(checkpointMaxSeq(false, null, '0'), '0');
  });

  it('is 0 while events are being sealed', () => {
    assert.equal(checkpointMaxSeq(true, '150', '100'), '0');
  });
});
