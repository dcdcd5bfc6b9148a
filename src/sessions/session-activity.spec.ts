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

  it('keeps every session of a failed write for the next one, however many were noted during it', async () => {
    const ids = Array.from({ length: 6 }, (_, i) => `00000000-0000-4000-8000-00000000000${i}`);
    // The stand-in connection notes activity on the buffer it serves, made below.
    const served: { buffer?: SessionActivityBuffer } = {};
    let writes = 0;
    const writtenLater = new Set<string>();
    const runner = {
      query: async (_text: string, params: unknown[]) => {
        // The first write fails, once three more sessions were noted meanwhile (past maxPending).
        if (++writes === 1) {
          for (const id of ids.slice(3)) served.buffer!.record(id, Date.now(), false);
          throw new Error('Connection terminated unexpectedly');
        }
        for (const id of params[0] as string[]) writtenLater.add(id);
        return { records: [] };
      },
      release: async () => undefined,
    };
    const dataSource = { manager: { connection: { createQueryRunner: () => runner } } } as unknown as DataSource;
    const buffer = new SessionActivityBuffer(dataSource, { idleTtlSeconds: 3600, intervalMs: 60_000, maxPending: 2 });
    served.buffer = buffer;
    try {
      for (const id of ids.slice(0, 3)) buffer.record(id, Date.now(), false);
      await buffer.flush();
      await buffer.flush(); // the next attempt (or the one the activity noted meanwhile asked for)
      for (let waited = 0; writtenLater.size < 6 && waited < 1_000; waited += 20) await new Promise((resolve) => setTimeout(resolve, 20));
      // Until 0.24.2 the failed write's three were dropped: only the three noted meanwhile were written.
      assert.deepEqual([...writtenLater].sort(), ids);
    } finally {
      await buffer.stop();
    }
  });
});
