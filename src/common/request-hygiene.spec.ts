import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { jsonDepth, MAX_JSON_DEPTH } from './request-hygiene';

describe('jsonDepth', () => {
  it('counts object and array nesting', () => {
    assert.equal(jsonDepth('x'), 0);
    assert.equal(jsonDepth(null), 0);
    assert.equal(jsonDepth({}), 1);
    assert.equal(jsonDepth({ a: 1, b: [1, 2] }), 2);
    assert.equal(jsonDepth([[[{}]]]), 4);
  });

  it('stops early on very deep values without exhausting the stack', () => {
    let deep: unknown = {};
    for (let i = 0; i < 200_000; i++) deep = [deep];
    assert.equal(jsonDepth(deep), MAX_JSON_DEPTH + 1);
  });
});
