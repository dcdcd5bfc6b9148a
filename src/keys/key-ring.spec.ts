import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ConfigService } from '@nestjs/config';
import type { DataSource } from 'typeorm';
import type { AppConfig } from '../config/config';
import { KeyRing } from './key-ring.service';
import type { KeyRotationService } from './key-rotation.service';
import type { RingKey } from './signing-key';

const CURRENT = { kid: 'current-kid', state: 'current', verifyUntil: null, verifiesUntilMs: null, fromJwtSecret: false } as unknown as RingKey;

/** A ring whose every read of the keys takes `readMs` (a slow database), counting the reads. */
function slowRing(readMs: number) {
  let reads = 0;
  const rotation = {
    loadLiveKeys: async () => {
      reads++;
      await sleep(readMs);
      return { keys: [CURRENT], refused: [] };
    },
  } as unknown as KeyRotationService;
  const ring = new KeyRing({ manager: {} } as DataSource, rotation, {} as ConfigService<AppConfig, true>, true);
  return { ring, reads: () => reads };
}

/** The promise's outcome, or 'still reading' after `ms` (a read that never ends must fail the test, not hang it). */
function within<T>(promise: Promise<T>, ms: number): Promise<T | 'still reading'> {
  return Promise.race([promise, sleep(ms, 'still reading' as const)]);
}

describe('KeyRing.reload', () => {
  it("applies a read while a timer asks again and again (reads slower than the poll): a timer's request shares the read under way", async () => {
    const { ring, reads } = slowRing(40);
    // The poll's 2 s against reads of 40 ms, scaled down: a request every 10 ms.
    const poll = setInterval(() => void ring.reload({ periodic: true }), 10);
    try {
      // Until 0.28.0 each request discarded the read under way, and none was ever applied.
      assert.equal(await within(ring.reload({ periodic: true }), 2_000), undefined);
    } finally {
      clearInterval(poll);
    }
    assert.equal(ring.staleness(), undefined, 'read and applied');
    assert.equal(reads(), 1);
  });

  it('reads again when a change is announced during a read (the read may predate it)', async () => {
    const { ring, reads } = slowRing(40);
    const first = ring.reload();
    await sleep(10);
    void ring.reload(); // a NOTIFY
    await first;
    assert.equal(reads(), 2);
  });
});
