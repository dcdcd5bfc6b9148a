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
});
