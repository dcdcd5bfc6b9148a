import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { ConfigService } from '@nestjs/config';
import { Logger, type LoggerService } from '@nestjs/common';
import type { DataSource } from 'typeorm';
import type { AppConfig } from '../config/config';
import { LoginThrottleService } from '../login-throttle/login-throttle.service';
import { PgThrottlerStorage } from './pg-throttler.storage';

/** A data source whose every query fails as pg fails when the server refuses connections. */
function unreachable(): DataSource {
  const refused = () => Promise.reject(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }));
  const runner = { query: refused, release: () => Promise.resolve() };
  return { manager: { connection: { createQueryRunner: () => runner } } } as unknown as DataSource;
}

describe('pruning jobs during a database outage', () => {
  const lines: Array<{ level: string; text: string }> = [];
  const capture: LoggerService = {
    log: () => undefined,
    warn: (m: unknown) => void lines.push({ level: 'warn', text: String(m) }),
    error: (m: unknown) => void lines.push({ level: 'error', text: String(m) }),
  };
  afterEach(() => {
    Logger.overrideLogger(false);
    lines.length = 0;
  });

  it('warn that they skipped (the outage monitor reports the outage), and log no error', async () => {
    Logger.overrideLogger(capture);
    await new PgThrottlerStorage(unreachable(), { get: () => 'a-pepper-for-the-counter-keys' } as unknown as ConfigService<AppConfig, true>).prune(
      60_000,
    );
    const config = { get: (name: string) => (name === 'PASSWORD_PEPPER' ? 'a-pepper-for-the-counter-keys' : 60) } as unknown as ConfigService;
    await new LoginThrottleService(unreachable(), config as never, true).prune();
    assert.deepEqual(lines, [
      { level: 'warn', text: 'Pruning rate-limit counters skipped: the database is unavailable' },
      { level: 'warn', text: 'Pruning login counters skipped: the database is unavailable' },
    ]);
  });
});
