import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  canonicalEvent,
  canonicalJson,
  chainKeyOf,
  ChainedEvent,
  checkpointMac,
  eventHash,
  GENESIS_HASH,
  GLOBAL_CHAIN,
  matchesEventHash,
  microsOfTime,
  sameMac,
  timeOfMicros,
} from './audit-chain';

const KEY = 'unit-test-audit-key-of-at-least-32-bytes';
const EVENT: ChainedEvent = {
  id: '0b6e5a1c-2f0e-4c53-9a1e-1d2b3c4d5e6f',
  type: 'LOGIN',
  userId: '5d1f7a52-8a43-4b7e-9a55-0c2b9f1d3e4a',
  sessionId: null,
  ipAddress: '203.0.113.7',
  userAgent: 'curl/8.5.0 "quoted", with, commas',
  metadata: canonicalJson({ method: 'email' }),
  createdAt: '2026-12-01T12:00:00.123456Z',
  chainKey: '5d1f7a52-8a43-4b7e-9a55-0c2b9f1d3e4a',
  position: 3,
};

describe('canonicalJson', () => {
  it('sorts keys at every depth, drops undefined, and has no whitespace', () => {
    assert.equal(
      canonicalJson({ b: 1, a: { d: [2, { z: null, y: true }], c: 'x' }, u: undefined }),
      '{"a":{"c":"x","d":[2,{"y":true,"z":null}]},"b":1}',
    );
  });

  it('gives what jsonb gives back the same text as what was written', () => {
    // jsonb reorders keys (shorter first) and prints numbers in its own form; JSON.parse of it canonicalises back.
    const written = { long_key: 0.1, b: 1e21, a: -0, s: 'é\u2028' };
    const fromJsonb = JSON.parse('{"a": 0, "b": 1000000000000000000000, "s": "é\u2028", "long_key": 0.1}');
    assert.equal(canonicalJson(fromJsonb), canonicalJson(written));
  });
});

describe('canonicalEvent and eventHash', () => {
  it('is a JSON array of every field in a fixed order (version 1)', () => {
    assert.equal(
      canonicalEvent(EVENT),
      '["sessionary.audit.v1","5d1f7a52-8a43-4b7e-9a55-0c2b9f1d3e4a",3,"0b6e5a1c-2f0e-4c53-9a1e-1d2b3c4d5e6f","LOGIN",' +
        '"5d1f7a52-8a43-4b7e-9a55-0c2b9f1d3e4a",null,"203.0.113.7","curl/8.5.0 \\"quoted\\", with, commas",{"method":"email"},' +
        '"2026-12-01T12:00:00.123456Z"]',
    );
    assert.doesNotThrow(() => JSON.parse(canonicalEvent(EVENT)));
  });

  it('treats upper-case uuids as the stored lower-case ones', () => {
    assert.equal(canonicalEvent({ ...EVENT, id: EVENT.id.toUpperCase(), userId: EVENT.userId!.toUpperCase() }), canonicalEvent(EVENT));
  });

  it('changes with every field, the previous hash and the key', () => {
    const base = eventHash(KEY, GENESIS_HASH, EVENT);
    assert.match(base, /^[0-9a-f]{64}$/);
    const variants: ChainedEvent[] = [
      { ...EVENT, type: 'LOGOUT' },
      { ...EVENT, userId: null },
      { ...EVENT, sessionId: EVENT.id },
      { ...EVENT, ipAddress: null },
      { ...EVENT, userAgent: 'other' },
      { ...EVENT, metadata: '{"method":"username"}' },
      { ...EVENT, createdAt: '2026-12-01T12:00:00.123457Z' },
      { ...EVENT, chainKey: GLOBAL_CHAIN },
      { ...EVENT, position: 4 },
      // Moving a value from one field to the next must not give the same bytes.
      { ...EVENT, ipAddress: null, userAgent: `203.0.113.7${EVENT.userAgent}` },
    ];
    for (const v of variants) assert.notEqual(eventHash(KEY, GENESIS_HASH, v), base, JSON.stringify(v));
    assert.notEqual(eventHash(KEY, 'f'.repeat(64), EVENT), base);
    assert.notEqual(eventHash(`${KEY}x`, GENESIS_HASH, EVENT), base);
  });
});

describe('chainKeyOf, sameMac, checkpointMac', () => {
  it('puts events without a user in the global chain', () => {
    assert.equal(chainKeyOf(null), GLOBAL_CHAIN);
    assert.equal(chainKeyOf(EVENT.userId!.toUpperCase()), EVENT.userId);
  });

  it('compares MACs of any length without throwing', () => {
    assert.equal(sameMac('a'.repeat(64), 'a'.repeat(64)), true);
    assert.equal(sameMac('a'.repeat(63), 'a'.repeat(64)), false);
    assert.equal(sameMac(null, 'a'.repeat(64)), false);
    // 64 characters, 65 bytes: timingSafeEqual threw on it until 0.23.0.
    assert.equal(sameMac(`\u00e9${'a'.repeat(63)}`, 'a'.repeat(64)), false);
  });

  it("covers every field of a checkpoint, the previous checkpoint's mac included", () => {
    const c = {
      id: 2,
      createdAt: '2026-12-01T12:00:00.000001Z',
      chains: 3,
      events: 10,
      maxSeq: '12',
      digest: 'd'.repeat(64),
      prevMac: 'p'.repeat(64),
    };
    const mac = checkpointMac(KEY, c);
    for (const changed of [
      { id: 3 },
      { createdAt: '2026-12-01T12:00:00.000002Z' },
      { chains: 4 },
      { events: 9 },
      { maxSeq: '13' },
      { digest: 'e'.repeat(64) },
      { prevMac: 'q'.repeat(64) },
    ]) {
      assert.notEqual(checkpointMac(KEY, { ...c, ...changed }), mac, JSON.stringify(changed));
    }
  });
});

describe('microsOfTime / timeOfMicros', () => {
  it("read and write PostgreSQL's microsecond UTC form exactly, both ways", () => {
    for (const text of ['2026-12-01T12:00:00.123456Z', '1970-01-01T00:00:00.000000Z', '2026-12-31T23:59:59.999999Z', '2027-01-01T00:00:00.000001Z']) {
      assert.equal(timeOfMicros(microsOfTime(text)), text);
    }
    assert.equal(microsOfTime('1970-01-01T00:00:01.000002Z'), 1_000_002);
    assert.equal(timeOfMicros(Date.UTC(2026, 11, 1, 12) * 1000 + 7), '2026-12-01T12:00:00.000007Z');
  });

  it('keep order: one microsecond later is a later string', () => {
    const t = microsOfTime('2026-12-01T12:00:00.999999Z');
    assert.equal(timeOfMicros(t + 1), '2026-12-01T12:00:01.000000Z');
    assert.ok(timeOfMicros(t + 1) > timeOfMicros(t));
  });
});

describe('matchesEventHash', () => {
  it("accepts exactly eventHash's hash of the same event after the same previous hash", () => {
    const prev = 'c'.repeat(64);
    const hash = eventHash(KEY, prev, EVENT);
    assert.equal(matchesEventHash(KEY, hash, prev, EVENT), true);
    assert.equal(matchesEventHash(KEY, hash, GENESIS_HASH, EVENT), false);
    assert.equal(matchesEventHash(KEY, hash, prev, { ...EVENT, position: 4 }), false);
    assert.equal(matchesEventHash(`${KEY}x`, hash, prev, EVENT), false);
    for (const stored of [null, '', hash.toUpperCase(), hash.slice(0, 63), `${hash.slice(0, 63)}g`, `${hash}0`]) {
      assert.equal(matchesEventHash(KEY, stored, prev, EVENT), false, String(stored));
    }
  });
});
