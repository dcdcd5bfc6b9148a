import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { describe, it } from 'node:test';
import { ExportDigest, sealFilterOf, sealMac, sealOf } from './audit-export-format';

const KEY = 'k'.repeat(64);
const hmac = (canonical: unknown[]) => createHmac('sha256', KEY).update(JSON.stringify(canonical)).digest('hex');
const digestOf = (...lines: Array<[string, string]>) => {
  const digest = new ExportDigest();
  for (const [seq, hash] of lines) digest.add(seq, hash);
  return digest;
};

describe('audit export seal', () => {
  it('version 1 (no afterSeq) has the same fields and MAC input as before 0.17.0, so files written then still verify', () => {
    const filter = sealFilterOf({ type: 'LOGIN', from: new Date('2026-11-01T00:00:00Z') });
    const seal = sealOf(KEY, filter, digestOf(['7', 'a'.repeat(64)]));
    assert.deepEqual(Object.keys(seal), ['seal', 'filter', 'lines', 'digest', 'mac']);
    assert.deepEqual(seal.filter, { from: '2026-11-01T00:00:00.000Z', to: null, userId: null, type: 'LOGIN' });
    assert.equal(seal.seal, 'sessionary.audit.export.v1');
    assert.equal(seal.mac, hmac(['sessionary.audit.export.v1', '2026-11-01T00:00:00.000Z', null, null, 'LOGIN', 1, seal.digest]));
  });

  it('version 2 (afterSeq) states the range under its MAC: another afterSeq or throughSeq is another MAC', () => {
    const seal = sealOf(KEY, sealFilterOf({}, '41'), digestOf(['42', 'b'.repeat(64)]), '57');
    assert.equal(seal.seal, 'sessionary.audit.export.v2');
    assert.deepEqual(Object.keys(seal), ['seal', 'filter', 'throughSeq', 'lines', 'digest', 'mac']);
    assert.deepEqual(seal.filter, { from: null, to: null, userId: null, type: null, afterSeq: '41' });
    assert.equal(seal.mac, hmac(['sessionary.audit.export.v2', null, null, null, null, '41', '57', 1, seal.digest]));
    const { mac: _mac, ...fields } = seal;
    assert.notEqual(sealMac(KEY, { ...fields, throughSeq: '58' }), seal.mac);
    assert.notEqual(sealMac(KEY, { ...fields, filter: { ...fields.filter, afterSeq: '40' } }), seal.mac);
    // The same values under the other version's name are another input too.
    assert.notEqual(sealMac(KEY, { ...fields, seal: 'sessionary.audit.export.v1' }), seal.mac);
  });

  it('states a throughSeq exactly when the export is after a seq', () => {
    assert.throws(() => sealOf(KEY, sealFilterOf({}, '1'), digestOf()), /states the seq it runs through/);
    assert.throws(() => sealOf(KEY, sealFilterOf({}), digestOf(), '5'), /states the seq it runs through/);
  });
});
