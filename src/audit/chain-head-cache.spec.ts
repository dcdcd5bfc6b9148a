import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ChainHeadCache } from './chain-head-cache';

const head = (position: number) => ({ position, hash: String(position).padStart(64, '0'), atMicros: position });

describe('ChainHeadCache', () => {
  it('answers the head last set for a chain', () => {
    const cache = new ChainHeadCache(10);
    assert.equal(cache.get('a'), undefined);
    cache.set('a', head(1));
    cache.set('a', head(2));
    assert.deepEqual(cache.get('a'), head(2));
    assert.equal(cache.size, 1);
  });

  it('forgets the least recently written chain first when full', () => {
    const cache = new ChainHeadCache(2);
    cache.set('a', head(1));
    cache.set('b', head(1));
    cache.set('a', head(2)); // a is now the most recent
    cache.set('c', head(1));
    assert.equal(cache.size, 2);
    assert.equal(cache.get('b'), undefined);
    assert.deepEqual(cache.get('a'), head(2));
    assert.deepEqual(cache.get('c'), head(1));
  });
});
