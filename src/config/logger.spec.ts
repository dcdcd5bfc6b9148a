import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { MIGRATIONS } from '../database/data-source.options';
import { redactSecretKeys } from './log-redaction';
import type { LoggerService } from '@nestjs/common';
import { type AccessLogger, createLogger, neutraliseControlCharacters, scrubSecrets, StderrLogger } from './logger';

describe('scrubSecrets', () => {
  const jwt = 'eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU';
  const refresh = 'Qm9ndXNSZWZyZXNoVG9rZW5WYWx1ZUZvclRlc3RzMTIz'; // 44 chars would not match; see below
  const refresh43 = refresh.slice(0, 43);
  const bcrypt = '$2b$12$' + 'a'.repeat(53);
  const hex = 'ab'.repeat(32);

  for (const [name, input, secret] of [
    ['a JWT', `token ${jwt} seen`, jwt],
    ['a bearer header', 'Authorization: Bearer abc.def-ghi', 'abc.def-ghi'],
    ['a bcrypt hash', `hash=${bcrypt}`, bcrypt],
    ['a token hash', `looked up ${hex}`, hex],
    ['a refresh token', `refresh ${refresh43} used`, refresh43],
    ['a password in JSON', '{"email":"a@b.c","password":"hunter2-is-long"}', 'hunter2-is-long'],
    ['a password in key=value', 'password=hunter2-is-long next', 'hunter2-is-long'],
    ['a database password', 'connect postgres://app:s3cr3t-pass@db:5432/x failed', 's3cr3t-pass'],
  ] as const) {
    it(`masks ${name}`, () => {
      const out = scrubSecrets(input);
      assert.ok(!out.includes(secret), out);
      assert.match(out, /REDACTED|\*\*\*/);
    });
  }

  // The userinfo runs to the last '@' before the host: a password's own '@' (until 0.24.1,
  // `u:p@ss@host` was logged as `u:***@ss@host`), an empty user name, a '/' before its last '@'.
  for (const [input, masked] of [
    ['connect postgres://u:p@ss@db:5432/x failed', 'connect postgres://u:***@db:5432/x failed'],
    ['postgresql://app:p@ss@w0rd@db/x?sslmode=require', 'postgresql://app:***@db/x?sslmode=require'],
    ['postgres://:p@ss@db/x', 'postgres://:***@db/x'],
    ['postgres://u:a/b@c@db/x', 'postgres://u:***@db/x'],
    ['postgres://u:p@db/x, reported by ops@example.com', 'postgres://u:***@db/x, reported by ops@example.com'],
  ] as const) {
    it(`masks the whole password of ${input}, and only it`, () => {
      assert.equal(scrubSecrets(input), masked);
    });
  }

  it("leaves every migration's name alone, one of a token's length included (43 characters: masked until 0.27.0), and masks a token of that length", () => {
    const names = MIGRATIONS.map((migration) => migration.name);
    assert.ok(
      names.some((name) => name.length === 43),
      'a name of 43 characters is among them',
    );
    const line = `Applied ${names.length} migration(s): ${names.join(', ')}`;
    assert.equal(scrubSecrets(line), line);
    assert.equal(
      scrubSecrets('The last migration applied is AuditSealClosedAndOldSessionId1767200000000.'),
      'The last migration applied is AuditSealClosedAndOldSessionId1767200000000.',
    );
    // A token of any other shape is still masked: 12 digits, a lower-case start, a '_' among the letters.
    for (const token of [
      refresh43,
      'AbcdefghijklmnopqrstuvwxyzAbcd123456789012x',
      'abcdefghijklmnopqrstuvwxyzabcd1767200000000',
      'Abcdefghijklmnopqrstuvwxyz_bcd1767200000000',
    ]) {
      assert.equal(token.length, 43);
      assert.equal(scrubSecrets(`x ${token} y`), 'x [REDACTED_TOKEN] y', token);
    }
  });

  it('leaves ordinary text, UUIDs and ISO dates alone', () => {
    const text = 'Session 3f2b1c9e-8d7a-4b6c-9e5f-1a2b3c4d5e6f ended at 2026-11-26T23:00:00.000Z (idle_timeout)';
    assert.equal(scrubSecrets(text), text);
  });
});

describe('neutraliseControlCharacters', () => {
  it('escapes line breaks and other control characters so one event stays one line', () => {
    const out = neutraliseControlCharacters('curl\r\n[Nest] 1 - ERROR forged\u2028x\u001b[31m');
    // eslint-disable-next-line no-control-regex -- looking for control characters is the point
    assert.ok(!/[\r\n\u2028\u001b]/.test(out));
    assert.equal(out, 'curl\\u000d\\u000a[Nest] 1 - ERROR forged\\u2028x\\u001b[31m');
  });
});

describe('redactSecretKeys', () => {
  it('masks secret keys at any depth, in any case, in arrays, Maps and error causes, without mutating', () => {
    const input = {
      user: { email: 'a@b.c', Password: 'p1' },
      list: [{ nested: { refreshToken: 'r1' } }],
      headers: new Map<string, unknown>([
        ['authorization', 'Bearer x'],
        ['accept', 'json'],
      ]),
      error: Object.assign(new Error('failed with password=p2'), { cause: { token: 't1' } }),
    };
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- arbitrary nested shapes
    const out = redactSecretKeys(input) as Record<string, any>;
    const text = JSON.stringify({ ...out, headers: Object.fromEntries(out.headers) });
    for (const secret of ['p1', 'p2', 'r1', 'Bearer x', 't1']) assert.ok(!text.includes(secret), text);
    assert.equal(out.user.email, 'a@b.c');
    assert.equal(out.headers.get('accept'), 'json');
    assert.equal(out.error.message, 'failed with password="[REDACTED]"');
    assert.equal(input.user.Password, 'p1');
    assert.equal(input.list[0].nested.refreshToken, 'r1');
  });

  it("masks the database's and HTTP's own names for secrets too (a row, a header set)", () => {
    const row = { id: 'r', token_hash: 'h1', refresh_token: 'h2', access_token: 'h3', pepper: 'h4' };
    const headers = { 'set-cookie': 'sid=h5', 'Proxy-Authorization': 'Basic h6', accept: 'json' };
    const text = JSON.stringify(redactSecretKeys({ row, headers }));
    for (const secret of ['h1', 'h2', 'h3', 'h4', 'h5', 'h6']) assert.ok(!text.includes(secret), text);
    assert.ok(text.includes('"accept":"json"') && text.includes('"id":"r"'), text);
  });

  it("masks secret shapes in strings at any depth, but an audit checkpoint's public MACs and digest", () => {
    const jwt = 'eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU';
    const hex = 'ab'.repeat(32);
    const logged = { event: 'host.callback', detail: { note: 'sent Bearer abc.def-ghi' }, urls: [`/cb?t=${jwt}`], seen: new Set([hex]) };
    const text = JSON.stringify(redactSecretKeys(logged), (_k, v: unknown) => (v instanceof Set ? [...v] : v));
    for (const secret of ['abc.def-ghi', jwt, hex]) assert.ok(!text.includes(secret), text);
    assert.ok(text.includes('"event":"host.callback"'), text);
    const checkpoint = { event: 'audit.checkpoint', id: 7, digest: hex, prevMac: 'cd'.repeat(32), mac: 'ef'.repeat(32) };
    assert.equal(redactSecretKeys(checkpoint), checkpoint, 'its line carries the checkpoint off the host as it is');
  });

  it('returns what has nothing to mask as is, and survives cycles', () => {
    const plain = { a: 1, b: ['x'] };
    assert.equal(redactSecretKeys(plain), plain);
    const cyclic: Record<string, unknown> = { secret: 's' };
    cyclic.self = cyclic;
    assert.deepEqual(redactSecretKeys(cyclic), { secret: '[REDACTED]', self: '[Circular]' });
  });
});

describe('text logger (LOG_FORMAT=text)', () => {
  it('stamps each line with the time in ISO-8601 UTC, not the local time without an offset; no colours on a pipe', () => {
    // The test runner gives each file a pipe, as a container's log collector does.
    assert.notEqual(process.stdout.isTTY, true);
    const lines: string[] = [];
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((chunk: string | Uint8Array) => lines.push(String(chunk)) > 0) as typeof process.stdout.write;
    const before = Date.now();
    try {
      createLogger({ LOG_LEVEL: 'log', LOG_FORMAT: 'text' }).log('hello', 'Test');
    } finally {
      process.stdout.write = write;
    }
    assert.equal(lines.length, 1);
    assert.ok(!lines[0].includes('\x1b'), JSON.stringify(lines[0]));
    const stamp = /(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z) +LOG \[Test\] hello/.exec(lines[0]);
    assert.ok(stamp, lines[0]);
    assert.ok(Math.abs(Date.parse(stamp[1]) - before) < 5_000, stamp[1]);
  });

  it("masks an error's stack printed on its own line, and an Error logged as the message, as the JSON logger does; the CLI's logger too", () => {
    const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl';
    const lines: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array) => lines.push(String(chunk)) > 0) as typeof process.stderr.write;
    try {
      for (const logger of [createLogger({ LOG_LEVEL: 'log', LOG_FORMAT: 'text' }), new StderrLogger()]) {
        logger.error('Unhandled error', 'Error: password=hunter2-is-long\n    at f (x.js:1:1)', 'Filter');
        logger.error(new Error(`refused ${jwt}`), 'Filter');
        logger.fatal?.('Boot failed', `Error: postgres://app:s3cret-pw@db:5432/app\n    at g (y.js:2:2)`, 'Bootstrap');
      }
    } finally {
      process.stderr.write = write;
    }
    const text = lines.join('');
    for (const secret of ['hunter2', jwt, 's3cret-pw']) assert.ok(!text.includes(secret), text);
    assert.match(text, /password="\[REDACTED\]"/);
    assert.match(text, /\[REDACTED_JWT\]/);
    assert.match(text, /postgres:\/\/app:\*\*\*@db/);
  });
});

describe('JSON logger', () => {
  const capture = () => {
    const out: string[] = [];
    const err: string[] = [];
    const sink = (lines: string[]) => ({ write: (chunk: string) => void lines.push(...chunk.split('\n').filter(Boolean)) });
    return { out, err, destinations: { stdout: sink(out), stderr: sink(err) } };
  };

  it('writes Nest-shaped JSON lines, masked, at the configured level', () => {
    const { out, err, destinations } = capture();
    const logger = createLogger({ LOG_LEVEL: 'log', LOG_FORMAT: 'json' }, destinations);
    const bcrypt = '$2b$12$' + 'a'.repeat(53);
    logger.log({ event: 'request', route: '/x', authorization: 'Bearer abc' }, 'HTTP');
    logger.log(`stored ${bcrypt}`, 'Users');
    logger.debug!('not at this level', 'Users');
    logger.error('Unhandled error', `Error: password=hunter2-is-long\n    at f (/app/x.js:1:2)`, 'Filter');
    logger.fatal!(new Error('boom postgres://app:s3cr3t@db/x'));
    assert.equal(out.length, 2);
    const [request, text] = out.map((l) => JSON.parse(l));
    assert.equal(request.level, 'log');
    assert.equal(request.context, 'HTTP');
    assert.equal(request.pid, process.pid);
    // Epoch milliseconds (UTC by definition; ASVS 16.2.2), the time of the call.
    assert.ok(Number.isInteger(request.timestamp) && Math.abs(request.timestamp - Date.now()) < 5_000, String(request.timestamp));
    assert.deepEqual(request.message, { event: 'request', route: '/x', authorization: '[REDACTED]' });
    assert.equal(text.message, 'stored [REDACTED_HASH]');
    assert.equal(err.length, 2);
    const [error, fatal] = err.map((l) => JSON.parse(l));
    assert.equal(error.level, 'error');
    assert.equal(error.context, 'Filter');
    assert.equal(error.message, 'Unhandled error');
    assert.match(error.stack, /at f/);
    assert.ok(!error.stack.includes('hunter2'));
    assert.equal(fatal.level, 'fatal');
    assert.ok(!JSON.stringify(fatal).includes('s3cr3t'), err[1]);
  });

  it('writes the access line exactly as log(record, "HTTP") would, one valid line whatever the user agent', () => {
    const { out, destinations } = capture();
    const logger = createLogger({ LOG_LEVEL: 'log', LOG_FORMAT: 'json' }, destinations) as LoggerService & AccessLogger;
    const record = {
      event: 'request',
      requestId: 'req-1',
      method: 'GET',
      route: '/x',
      status: 200,
      ms: 1,
      ip: '127.0.0.1',
      userAgent: 'a "quoted"\n\u2028 agent\\',
      userId: null,
    };
    logger.access(record);
    logger.log(record, 'HTTP');
    assert.equal(out.length, 2);
    const [fast, slow] = out.map((l) => JSON.parse(l));
    assert.deepEqual(fast.message, record);
    // Same keys in the same order, same values but the moment.
    assert.deepEqual(Object.keys(fast), Object.keys(slow));
    assert.deepEqual({ ...fast, timestamp: 0 }, { ...slow, timestamp: 0 });
    assert.ok(Math.abs(fast.timestamp - slow.timestamp) < 1000);
  });

  it('writes no access line below the log level', async () => {
    const written = async (level: 'warn' | 'log') => {
      const { out, destinations } = capture();
      const logger = createLogger({ LOG_LEVEL: level, LOG_FORMAT: 'json' }, destinations) as LoggerService & AccessLogger;
      logger.access({ event: 'request' });
      // Access lines are written at the end of the turn: look after it.
      await new Promise((resolve) => setImmediate(resolve));
      return out.length;
    };
    assert.equal(await written('warn'), 0);
    assert.equal(await written('log'), 1, 'the same line at the log level is written');
  });

  // The production destinations are asynchronous: nothing may be lost when the process ends.
  const run = (body: string) =>
    spawnSync(process.execPath, ['-e', `const { createLogger, flushLogs } = require(${JSON.stringify(join(__dirname, 'logger.js'))});\n${body}`], {
      encoding: 'utf8',
      maxBuffer: 64 * 1024 * 1024,
    });
  const lines = (text: string) =>
    text
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));

  it('loses no line on process.exit() or a fatal boot error', () => {
    const result = run(`
      const logger = createLogger({ LOG_LEVEL: 'log', LOG_FORMAT: 'json' });
      for (let i = 0; i < 20000; i++) logger.log({ event: 'request', i }, 'HTTP');
      logger.fatal('cannot boot', 'Bootstrap');
      // Access lines wait for the end of the event loop's turn, which process.exit() never reaches.
      for (let i = 20000; i < 20010; i++) logger.access({ event: 'request', i });
      process.exit(1);`);
    assert.equal(result.status, 1);
    const out = lines(result.stdout);
    assert.equal(out.length, 20010);
    assert.deepEqual(
      out.map((l) => l.message.i),
      Array.from({ length: 20010 }, (_, i) => i),
    );
    assert.deepEqual(
      lines(result.stderr).map((e) => e.message),
      ['cannot boot'],
    );
  });

  it('loses no line when the process ends by a re-raised signal after flushLogs()', () => {
    const result = run(`
      const logger = createLogger({ LOG_LEVEL: 'log', LOG_FORMAT: 'json' });
      for (let i = 0; i < 20000; i++) logger.log({ event: 'request', i }, 'HTTP');
      for (let i = 20000; i < 20010; i++) logger.access({ event: 'request', i });
      flushLogs();
      // Lines of the shutdown hooks Nest runs after the one that flushed (until 0.27.0, lost).
      logger.log({ event: 'after the flush', i: 20010 }, 'KeyRing');
      logger.access({ event: 'request', i: 20011 });
      logger.error('the pool did not close', 'TypeORM');
      process.kill(process.pid, 'SIGTERM');`);
    assert.equal(result.signal, 'SIGTERM');
    assert.deepEqual(
      lines(result.stderr).map((l) => l.message),
      ['the pool did not close'],
    );
    assert.deepEqual(
      lines(result.stdout).map((l) => l.message.i),
      Array.from({ length: 20012 }, (_, i) => i),
    );
  });

  it('writes the access lines of a turn at its end, after the lines logged before them and before those logged after', async () => {
    const { out, destinations } = capture();
    const logger = createLogger({ LOG_LEVEL: 'log', LOG_FORMAT: 'json' }, destinations) as LoggerService & AccessLogger;
    logger.log('first', 'Test');
    logger.access({ event: 'request', i: 1 });
    logger.access({ event: 'request', i: 2 });
    assert.equal(out.length, 1, 'access lines wait for the end of the turn');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(out.length, 3);
    logger.access({ event: 'request', i: 3 });
    logger.warn('last', 'Test');
    assert.deepEqual(
      out.map((l) => JSON.parse(l).message),
      ['first', { event: 'request', i: 1 }, { event: 'request', i: 2 }, { event: 'request', i: 3 }, 'last'],
    );
  });
});
