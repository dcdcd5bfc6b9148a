import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { jsonDepth, MAX_JSON_DEPTH, scrubbedUserAgent } from './request-hygiene';

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

describe('scrubbedUserAgent', () => {
  it('masks a secret-shaped part of a user agent, the same way every time', () => {
    const ua = 'curl/8.0 eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl';
    assert.equal(scrubbedUserAgent(ua), 'curl/8.0 [REDACTED_JWT]');
    assert.equal(scrubbedUserAgent(ua), 'curl/8.0 [REDACTED_JWT]');
  });

  it('leaves an ordinary user agent as it is', () => {
    const ua = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36';
    assert.equal(scrubbedUserAgent(ua), ua);
  });
});
