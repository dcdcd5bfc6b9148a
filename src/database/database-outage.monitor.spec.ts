import 'reflect-metadata';
import { describe, it, beforeEach, afterEach, before, after, mock } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { Logger, LoggerService } from '@nestjs/common';
import { DatabaseError } from 'pg';
import { QueryFailedError, DataSource } from 'typeorm';
import { DatabaseOutageMonitor, OUTAGE_PROBE_INTERVAL_MS, OUTAGE_REPORT_INTERVAL_MS, summarize } from './database-outage.monitor';

const refused = () => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });

function adminShutdown(): DatabaseError {
  return Object.assign(new DatabaseError('terminating connection due to administrator command', 60, 'error'), { code: '57P01', severity: 'FATAL' });
}

describe('DatabaseOutageMonitor', () => {
  const lines: { level: string; text: string }[] = [];
  const recorder: LoggerService = {
    log: (m: unknown) => void lines.push({ level: 'log', text: String(m) }),
    warn: (m: unknown) => void lines.push({ level: 'warn', text: String(m) }),
    error: (m: unknown) => void lines.push({ level: 'error', text: String(m) }),
  };
  let pool: EventEmitter;
  let databaseUp: boolean;
  let probes: number;
  /** The server answers, but takes no write. */
  let readOnly: boolean;
  let clock: number;
  let monitor: DatabaseOutageMonitor;

  before(() => Logger.overrideLogger(recorder));
  after(() => Logger.overrideLogger(false));
  beforeEach(() => {
    mock.timers.enable({ apis: ['setTimeout'] });
    lines.length = 0;
    pool = new EventEmitter();
    databaseUp = false;
    readOnly = false;
    probes = 0;
    clock = 1_000_000;
    const dataSource = {
      driver: { master: pool },
      query: async () => {
        probes++;
        if (!databaseUp) throw refused();
        return [{ writable: !readOnly }];
      },
    } as unknown as DataSource;
    monitor = new DatabaseOutageMonitor(dataSource);
    monitor.now = () => clock;
    monitor.onModuleInit();
  });
  afterEach(() => {
    monitor.beforeApplicationShutdown();
    mock.timers.reset();
  });

  /** Lets the probe's timer fire and its query settle. */
  async function advance(ms: number): Promise<void> {
    clock += ms;
    mock.timers.tick(ms);
    for (let i = 0; i < 5; i++) await Promise.resolve();
  }

  it('logs the start of an outage once, however many requests fail', () => {
    for (let i = 0; i < 500; i++) monitor.failed(new QueryFailedError('SELECT 1', [], adminShutdown()), 'GET /api/v1/users/me');
    assert.equal(lines.length, 1);
    assert.equal(lines[0].level, 'warn');
    assert.match(
      lines[0].text,
      /^Database unavailable \(57P01: terminating connection due to administrator command, first seen on GET \/api\/v1\/users\/me\)/,
    );
    assert.equal(monitor.isDown, true);
  });

  it('sums up the failures at most once per report interval while the outage lasts', () => {
    monitor.failed(refused(), 'POST /api/v1/auth/login');
    for (let i = 0; i < 41; i++) {
      clock += 1000;
      monitor.failed(refused(), 'POST /api/v1/auth/login');
    }
    // 41 s: one summary line at 30 s, counting the 30 failures since the first line.
    assert.equal(lines.length, 2);
    assert.match(
      lines[1].text,
      new RegExp(
        `^Database still unavailable after ${OUTAGE_REPORT_INTERVAL_MS / 1000}\\.0 s: 30 more failures \\(ECONNREFUSED: connect ECONNREFUSED`,
      ),
    );
  });

  it('probes while down, quietly, and logs one line when the database answers again', async () => {
    monitor.failed(refused(), 'GET /health/ready');
    for (let i = 0; i < 3; i++) await advance(OUTAGE_PROBE_INTERVAL_MS);
    assert.equal(probes, 3);
    assert.equal(lines.length, 1);
    databaseUp = true;
    monitor.failed(refused(), 'GET /health/ready');
    await advance(OUTAGE_PROBE_INTERVAL_MS);
    assert.equal(monitor.isDown, false);
    assert.equal(lines.length, 2);
    assert.equal(lines[1].level, 'log');
    assert.match(lines[1].text, /^Database available again after 8\.0 s \(2 failures in all\)$/);
    // Up again: no more probes.
    await advance(10 * OUTAGE_PROBE_INTERVAL_MS);
    assert.equal(probes, 4);
  });

  it('stays down while the server answers but takes no write (read-only), and recovers once it does', async () => {
    monitor.failed(refused(), 'POST /api/v1/auth/login');
    databaseUp = true;
    readOnly = true;
    for (let i = 0; i < 3; i++) await advance(OUTAGE_PROBE_INTERVAL_MS);
    assert.equal(monitor.isDown, true);
    assert.equal(lines.length, 1, 'no "available again" while it is read-only');
    readOnly = false;
    await advance(OUTAGE_PROBE_INTERVAL_MS);
    assert.equal(monitor.isDown, false);
    assert.match(lines[1].text, /^Database available again after 8\.0 s/);
  });

  it('logs a new outage after a recovery as a new start', async () => {
    monitor.failed(refused(), 'x');
    databaseUp = true;
    await advance(OUTAGE_PROBE_INTERVAL_MS);
    monitor.failed(refused(), 'y');
    assert.deepEqual(
      lines.map((l) => l.text.split(' (')[0]),
      ['Database unavailable', 'Database available again after 2.0 s', 'Database unavailable'],
    );
  });

  it("counts the pool's idle-connection errors (which would crash the process without a listener)", () => {
    pool.emit('error', adminShutdown());
    pool.emit('error', adminShutdown());
    assert.equal(monitor.isDown, true);
    assert.equal(lines.length, 1);
    assert.match(lines[0].text, /first seen on an idle pooled connection/);
  });

  it('stops probing when the application shuts down', async () => {
    monitor.failed(refused(), 'x');
    monitor.beforeApplicationShutdown();
    await advance(5 * OUTAGE_PROBE_INTERVAL_MS);
    assert.equal(probes, 0);
  });
});

describe('summarize', () => {
  it('names the innermost driver error by code, without SQL or parameters', () => {
    const text = summarize(new QueryFailedError('UPDATE users SET password_hash = $1', ['$2b$secret-hash'], adminShutdown()));
    assert.equal(text, '57P01: terminating connection due to administrator command');
  });

  it('follows causes, names TypeORM errors by name, and stays short', () => {
    assert.equal(summarize(new Error('outer', { cause: refused() })), 'ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:5432');
    assert.equal(summarize(new Error('x'.repeat(1000))).length, 200);
    assert.equal(summarize(undefined), 'undefined');
  });
});
