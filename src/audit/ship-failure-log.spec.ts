import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { LoggerService } from '@nestjs/common';
import { SHIP_FAILURE_REMINDER_MS, ShipFailureLog } from './ship-failure-log';

function setup() {
  const lines: Array<{ level: string; text: string; stack?: string }> = [];
  const logger: LoggerService = {
    log: (m: unknown) => void lines.push({ level: 'log', text: String(m) }),
    warn: (m: unknown) => void lines.push({ level: 'warn', text: String(m) }),
    error: (m: unknown, stack?: unknown) =>
      void lines.push({ level: 'error', text: String(m), ...(stack === undefined ? {} : { stack: String(stack) }) }),
  };
  const clock = { now: Date.parse('2026-12-06T00:00:00Z') };
  const log = new ShipFailureLog(logger, 'http https://logs.example/ingest', () => clock.now);
  return { lines, clock, log };
}

describe('ShipFailureLog', () => {
  it('logs the first failure with its stack, then a line at most every reminder period with the count, then the recovery', () => {
    const { lines, clock, log } = setup();
    log.failed('error', 'https://logs.example/ingest answered 503 to piece p1', 'Error: …\n    at deliver');
    for (let tick = 1; tick < 20; tick++) {
      clock.now += 60_000;
      log.failed('error', `https://logs.example/ingest answered 503 to piece p${tick + 1}`, 'Error: …\n    at deliver');
    }
    // 19 minutes: the first line, and one reminder at the 15th minute (the 16th failure).
    assert.deepEqual(lines, [
      {
        level: 'error',
        text: 'Shipping the audit log to http https://logs.example/ingest failed: https://logs.example/ingest answered 503 to piece p1',
        stack: 'Error: …\n    at deliver',
      },
      {
        level: 'error',
        text:
          'Shipping the audit log to http https://logs.example/ingest still failing: 16 failed ticks since 2026-12-06T00:00:00.000Z; ' +
          'the last: https://logs.example/ingest answered 503 to piece p16',
      },
    ]);
    assert.equal(SHIP_FAILURE_REMINDER_MS, 15 * 60_000);
    lines.length = 0;
    log.succeeded();
    log.succeeded();
    assert.deepEqual(lines, [
      {
        level: 'log',
        text: 'Shipping the audit log to http https://logs.example/ingest works again after 20 failed tick(s) since 2026-12-06T00:00:00.000Z',
      },
    ]);
    // A new streak starts over: its first failure is logged at once.
    lines.length = 0;
    clock.now += 1000;
    log.failed('warn', 'the database is unavailable');
    assert.deepEqual(lines, [
      { level: 'warn', text: 'Shipping the audit log to http https://logs.example/ingest failed: the database is unavailable' },
    ]);
  });

  it('logs an error at once when the streak so far was only warnings, with its stack, and keeps the error level after it', () => {
    const { lines, clock, log } = setup();
    log.failed('warn', 'the database is unavailable');
    clock.now += 60_000;
    log.failed('warn', 'the database is unavailable');
    clock.now += 60_000;
    log.failed('error', 'https://logs.example/ingest answered 500 to piece p', 'Error: stack');
    clock.now += 60_000;
    log.failed('error', 'https://logs.example/ingest answered 500 to piece p', 'Error: stack');
    clock.now += SHIP_FAILURE_REMINDER_MS;
    log.failed('warn', 'the database is unavailable');
    assert.deepEqual(
      lines.map((l) => [l.level, l.text.replace(/^Shipping the audit log to http \S+ /, ''), l.stack]),
      [
        ['warn', 'failed: the database is unavailable', undefined],
        [
          'error',
          'still failing: 3 failed ticks since 2026-12-06T00:00:00.000Z; the last: https://logs.example/ingest answered 500 to piece p',
          'Error: stack',
        ],
        ['error', 'still failing: 5 failed ticks since 2026-12-06T00:00:00.000Z; the last: the database is unavailable', undefined],
      ],
    );
  });

  it('logs nothing on success when nothing failed', () => {
    const { lines, log } = setup();
    log.succeeded();
    assert.deepEqual(lines, []);
  });
});
