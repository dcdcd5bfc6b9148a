import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { Logger, type LoggerService } from '@nestjs/common';
import type { DataSource } from 'typeorm';
import type { ConfigService } from '@nestjs/config';
import type { AppConfig } from '../config/config';
import { PgThrottlerStorage } from './pg-throttler.storage';

describe('rate-limit sync', () => {
  afterEach(() => Logger.overrideLogger(false));

  it('goes on syncing after a sync that threw outside its statements (one rejection would have failed every later one)', async () => {
    const errors: string[] = [];
    Logger.overrideLogger({
      log: () => undefined,
      warn: () => undefined,
      error: (m: unknown, stack?: unknown) => void errors.push(`${String(m)} ${String(stack)}`),
    } as LoggerService);
    // No hit is ever counted here, so no statement runs: the data source is never used.
    const storage = new PgThrottlerStorage(
      {} as DataSource,
      { get: () => 'a-pepper-for-the-counter-keys' } as unknown as ConfigService<AppConfig, true>,
    );
    const counters = (storage as unknown as { counters: { sweep: () => void } }).counters;
    const sweep = counters.sweep.bind(counters);
    let sweeps = 0;
    counters.sweep = () => {
      sweeps++;
      if (sweeps === 1) throw new Error('a bug in the sweep');
      sweep();
    };
    await storage.sync(); // resolves: the failure is logged, not left in the queue
    assert.equal(errors.length, 1);
    assert.match(errors[0], /a bug in the sweep/);
    await storage.sync();
    assert.equal(sweeps, 2, 'the next sync ran');
    assert.equal(errors.length, 1);
  });

  it('says once that syncing fails while one batch fails on every tick beside others that succeed, and once that it works again', async () => {
    const lines: string[] = [];
    Logger.overrideLogger({
      log: (m: unknown) => void lines.push(`log ${String(m)}`),
      warn: (m: unknown) => void lines.push(`warn ${String(m)}`),
      error: (m: unknown) => void lines.push(`error ${String(m)}`),
    } as LoggerService);
    // A database that refuses the statements of one group of settings (ttl 1234) while `refusing`.
    let refusing = true;
    const queryRunner = {
      query: (_text: string, params: unknown[]) => {
        const [keys, hits, ttl] = params as [string[], number[], number];
        if (refusing && ttl === 1234) return Promise.reject(new Error('refused for the test'));
        return Promise.resolve({ records: keys.map((key, i) => ({ key, hits: hits[i], window_ms: ttl, blocked_ms: 0 })), affected: keys.length });
      },
    };
    const storage = new PgThrottlerStorage(
      { manager: { queryRunner } } as unknown as DataSource,
      { get: () => 'a-pepper-for-the-counter-keys' } as unknown as ConfigService<AppConfig, true>,
    );
    for (let tick = 0; tick < 4; tick++) {
      storage.hit('fine', { ttl: 60_000, limit: 100, blockDuration: 60_000 });
      storage.hit('refused', { ttl: 1234, limit: 100, blockDuration: 1234 });
      await storage.sync();
    }
    assert.equal(storage.syncHealth.failures, 4);
    // Until 0.29.0: "failed" and "works again" on every tick.
    assert.equal(lines.length, 1, lines.join('\n'));
    assert.match(lines[0], /^warn Rate-limit sync with PostgreSQL failed; counting per instance/);
    refusing = false;
    storage.hit('refused', { ttl: 1234, limit: 100, blockDuration: 1234 });
    await storage.sync();
    assert.deepEqual(lines.slice(1), ['log Rate-limit sync with PostgreSQL works again']);
  });
});
