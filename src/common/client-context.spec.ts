import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { boundedClientContext, USER_AGENT_MAX_LENGTH, withoutPort } from './client-context';

describe('boundedClientContext', () => {
  it('cuts a long user agent without splitting a surrogate pair, and stores no lone surrogate', () => {
    // An emoji (two UTF-16 units) across the 512th unit: the whole emoji goes.
    const straddling = `${'a'.repeat(USER_AGENT_MAX_LENGTH - 1)}\u{1F600}tail`;
    const cut = boundedClientContext('203.0.113.9', straddling).userAgent!;
    assert.equal(cut, 'a'.repeat(USER_AGENT_MAX_LENGTH - 1));
    assert.ok(cut.isWellFormed());
    // Ending exactly on a whole pair keeps it.
    const whole = `${'a'.repeat(USER_AGENT_MAX_LENGTH - 2)}\u{1F600}tail`;
    assert.equal(boundedClientContext(null, whole).userAgent, `${'a'.repeat(USER_AGENT_MAX_LENGTH - 2)}\u{1F600}`);
    // A lone surrogate from a host's own code becomes U+FFFD, as PostgreSQL would store it.
    assert.deepEqual(boundedClientContext('10.0.0.1\ud800', 'Agent \udc00'), { ipAddress: '10.0.0.1\ufffd', userAgent: 'Agent \ufffd' });
    assert.deepEqual(boundedClientContext('', 42), { ipAddress: null, userAgent: null });
  });
});

describe('withoutPort', () => {
  it('takes the port a proxy appended off an IPv4 or bracketed IPv6 address', () => {
    assert.equal(withoutPort('203.0.113.7:5555'), '203.0.113.7');
    assert.equal(withoutPort('[2001:db8::7]:443'), '2001:db8::7');
    assert.equal(withoutPort('[2001:db8::7]'), '2001:db8::7');
    assert.equal(boundedClientContext('198.51.100.1:80', null).ipAddress, '198.51.100.1');
  });

  it('keeps addresses without a port, and anything that is not an address with one, as they are', () => {
    for (const address of [
      '203.0.113.7',
      '2001:db8::7',
      '::ffff:203.0.113.7',
      'fe80::1%eth0',
      'unknown',
      '999.1.1.1:80',
      '[not-an-ip]:80',
      '203.0.113.7:',
    ]) {
      assert.equal(withoutPort(address), address, address);
    }
  });
});
