import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { forwardedAddressCount, hopShortfallWarning, watchTrustedHops } from './trust-proxy-hops';

describe('trusted proxy hops', () => {
  it('counts the addresses of X-Forwarded-For, over every copy of the header, empty entries left out', () => {
    assert.equal(forwardedAddressCount(undefined), 0);
    assert.equal(forwardedAddressCount(''), 0);
    assert.equal(forwardedAddressCount('203.0.113.9'), 1);
    assert.equal(forwardedAddressCount('203.0.113.9, 10.0.0.7'), 2);
    assert.equal(forwardedAddressCount('203.0.113.9,,10.0.0.7, '), 2);
    assert.equal(forwardedAddressCount(['203.0.113.9', '10.0.0.7, 10.0.0.8']), 3);
  });

  it('warns only when a request came through some proxies, but fewer than the count', () => {
    assert.equal(hopShortfallWarning(2, 0), undefined, 'straight to the port: the connection is the client');
    assert.equal(hopShortfallWarning(2, 2), undefined);
    assert.equal(hopShortfallWarning(2, 5), undefined, 'more: the count picks the entry its outermost proxy added');
    assert.match(hopShortfallWarning(2, 1)!, /^TRUST_PROXY=2 trusts 2 proxies, but a request came with 1 X-Forwarded-For address: /);
    assert.match(hopShortfallWarning(3, 2)!, /came with 2 X-Forwarded-For addresses: .*set it to their number, or to their addresses\/CIDRs/);
    assert.equal(hopShortfallWarning(1, 0), undefined);
  });

  it('adds no hook unless TRUST_PROXY is a hop count of 2 or more', () => {
    const hooked = (trustProxy: string) => {
      let hooks = 0;
      watchTrustedHops({ addHook: () => void hooks++ } as unknown as FastifyInstance, trustProxy);
      return hooks;
    };
    for (const raw of ['false', '', '0', '1', 'true', '10.0.0.0/8', 'loopback']) assert.equal(hooked(raw), 0, raw);
    assert.equal(hooked('2'), 1);
    assert.equal(hooked(' 3 '), 1);
  });
});
