import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { NodeEnv } from './env.schema';
import { trustProxyWarning } from './trust-proxy-warning';

describe('trustProxyWarning', () => {
  it('warns production that TRUST_PROXY=true lets clients choose their address, and says what to set', () => {
    assert.ok(trustProxyWarning({ NODE_ENV: NodeEnv.Production, TRUST_PROXY: ' TRUE ' }), 'spelt as the setting accepts it');
    const warning = trustProxyWarning({ NODE_ENV: NodeEnv.Production, TRUST_PROXY: 'true' });
    assert.ok(warning);
    assert.match(warning, /leftmost one, which any client can write/);
    assert.match(warning, /number of proxies in front of the service \(e\.g\. 1\) or to their addresses\/CIDRs/);
  });

  it('warns production of a range that holds every address (prefix 0), as of true', () => {
    for (const raw of ['0.0.0.0/0', '10.0.0.1, ::/0', '::/00']) {
      const warning = trustProxyWarning({ NODE_ENV: NodeEnv.Production, TRUST_PROXY: raw });
      assert.ok(warning, raw);
      assert.match(warning, /every address: like TRUST_PROXY=true it believes every X-Forwarded-For entry/);
    }
    assert.equal(trustProxyWarning({ NODE_ENV: NodeEnv.Development, TRUST_PROXY: '0.0.0.0/0' }), undefined);
  });

  it('says nothing for a hop count, proxy addresses, no proxy, or outside production', () => {
    for (const raw of ['1', '10.0.0.0/8,127.0.0.1', '10.0.0.0/10', 'false', '']) {
      assert.equal(trustProxyWarning({ NODE_ENV: NodeEnv.Production, TRUST_PROXY: raw }), undefined, raw);
    }
    assert.equal(trustProxyWarning({ NODE_ENV: NodeEnv.Development, TRUST_PROXY: 'true' }), undefined);
    assert.equal(trustProxyWarning({ NODE_ENV: NodeEnv.Test, TRUST_PROXY: 'true' }), undefined);
  });
});
