import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { auditEventId } from './audit-event-id';

const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('auditEventId', () => {
  it('is a UUID version 7 whose first 48 bits are the time in ms', () => {
    const now = Date.UTC(2026, 11, 2, 12, 0, 0, 123);
    const id = auditEventId(now);
    assert.match(id, UUID_V7);
    assert.equal(parseInt(id.slice(0, 8) + id.slice(9, 13), 16), now);
    assert.match(auditEventId(), UUID_V7);
  });

  it('sorts by time, and differs within one ms', () => {
    const base = Date.UTC(2026, 0, 1);
    const ids = [base + 5, base + 1, base + 1000, base].map((ms) => auditEventId(ms));
    assert.deepEqual([...ids].sort(), [ids[3], ids[1], ids[0], ids[2]]);
    const same = new Set(Array.from({ length: 1000 }, () => auditEventId(base)));
    assert.equal(same.size, 1000);
  });
});
