import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DataSource } from 'typeorm';
import { SessionActivityBuffer } from './session-activity';

/**
 * The retry schedule after a failed write, which is the buffer's own logic: the statement
 * itself (locks, deadlines, SKIP LOCKED) is tested on PostgreSQL in test/sessions.e2e-spec.ts.
 * Here a stand-in connection fails the first write as a reset connection would.
 */
describe('SessionActivityBuffer', () => {
  it('tries a failed write again within seconds, not at the next tick a minute later', async () => {
    const attempts: number[] = [];
    const runner = {
      query: async () => {
        attempts.push(Date.now());
        if (attempts.length === 1) throw new Error('Connection terminated unexpectedly');
        return { records: [] };
      },
      release: async () => undefined,
    };
    const dataSource = { manager: { connection: { createQueryRunner: () => runner } } } as unknown as DataSource;
    const outcomes: Array<'failed' | 'done'> = [];
    const buffer = new SessionActivityBuffer(dataSource, {
      idleTtlSeconds: 3600,
      intervalMs: 60_000,
      onWrite: () => (outcome) => void outcomes.push(outcome ? 'done' : 'failed'),
    });
    buffer.start();
    try {
      buffer.record('00000000-0000-4000-8000-000000000001', Date.now(), false);
      await buffer.flush();
      assert.deepEqual(outcomes, ['failed']);
      assert.equal(buffer.pendingCount, 1, 'kept for the next attempt');
      for (let waited = 0; attempts.length < 2; waited += 50) {
        assert.ok(waited < 3_000, 'tried again within 3 s');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.ok(attempts[1] - attempts[0] >= 900, `after about a second (${attempts[1] - attempts[0]} ms)`);
      assert.deepEqual(outcomes, ['failed', 'done']);
      assert.equal(buffer.pendingCount, 0);
    } finally {
      await buffer.stop();
    }
  });
});
