import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { LoggerService } from '@nestjs/common';
import { describeFatal } from '../config/describe-fatal';
import { connectTargetOf, DatabaseConnectError, describeConnectFailure } from './connect-failure';
import { firstConnect } from './first-connect';

/** An error as pg raises it: a server's refusal (a SQLSTATE) or a socket's (an errno and where). */
const pgError = (message: string, fields: Record<string, unknown>) => Object.assign(new Error(message), fields);

const PASSWORD = 's3cr3t-XYZZY';
const target = connectTargetOf(`postgres://app:${PASSWORD}@db.internal:6432/sessionary`)!;

describe('describeConnectFailure', () => {
  it("names DATABASE_URL's host and port, never its password", () => {
    assert.deepEqual(target, { host: 'db.internal', port: '6432' });
    assert.deepEqual(connectTargetOf('postgres://app@db'), { host: 'db', port: '5432' });
    assert.deepEqual(connectTargetOf('postgres:///app?host=/var/run/postgresql'), { host: '/var/run/postgresql', port: '5432' });
    assert.equal(connectTargetOf('not a url'), undefined);
  });

  for (const [name, error, expected] of [
    [
      'a database that does not exist (3D000)',
      pgError('database "app" does not exist', { code: '3D000', severity: 'FATAL' }),
      'PostgreSQL at db.internal:6432 refused the connection: database "app" does not exist (SQLSTATE 3D000); create that database, or correct its name in DATABASE_URL',
    ],
    [
      'a wrong password (28P01)',
      pgError('password authentication failed for user "app"', { code: '28P01' }),
      'PostgreSQL at db.internal:6432 refused the connection: password authentication failed for user "app" (SQLSTATE 28P01); check the user name and password in DATABASE_URL',
    ],
    [
      'a client pg_hba.conf does not admit (28000)',
      pgError('no pg_hba.conf entry for host "10.0.0.5", user "app", database "app", no encryption', { code: '28000' }),
      'refused the connection: no pg_hba.conf entry for host "10.0.0.5", user "app", database "app", no encryption (SQLSTATE 28000); check the user name in DATABASE_URL',
    ],
    [
      'nothing listening (ECONNREFUSED)',
      pgError('connect ECONNREFUSED 10.0.0.7:6432', { code: 'ECONNREFUSED', address: '10.0.0.7', port: 6432 }),
      'Cannot connect to PostgreSQL at db.internal:6432 (ECONNREFUSED): nothing listens there',
    ],
    [
      'a host name that does not resolve (ENOTFOUND)',
      pgError('getaddrinfo ENOTFOUND db.internal', { code: 'ENOTFOUND', hostname: 'db.internal' }),
      'Cannot connect to PostgreSQL at db.internal:6432 (ENOTFOUND): the host name does not resolve',
    ],
    [
      'no answer (ETIMEDOUT)',
      pgError('connect ETIMEDOUT 10.0.0.7:6432', { code: 'ETIMEDOUT' }),
      'Cannot connect to PostgreSQL at db.internal:6432 (ETIMEDOUT): no answer',
    ],
    [
      "pg-pool's timeout, whose cause says nothing more",
      new Error('timeout exceeded when trying to connect'),
      'Cannot connect to PostgreSQL at db.internal:6432 (timed out): no answer',
    ],
    [
      'a failure wrapped by a caller (its cause)',
      new Error('boot failed', { cause: pgError('database "app" does not exist', { code: '3D000' }) }),
      '(SQLSTATE 3D000)',
    ],
  ] as const) {
    it(`says ${name} in one line`, () => {
      const line = describeConnectFailure(error, target) ?? '';
      assert.ok(line.includes(expected), line);
      assert.ok(!line.includes('\n') && !line.includes(PASSWORD), line);
    });
  }

  it("without DATABASE_URL's host and port, names the address the socket error gives (each of a happy-eyeballs connect's)", () => {
    const refused = (address: string) => pgError(`connect ECONNREFUSED ${address}:5432`, { code: 'ECONNREFUSED', address, port: 5432 });
    const both = Object.assign(new AggregateError([refused('::1'), refused('127.0.0.1')], ''), { code: 'ECONNREFUSED' });
    assert.match(describeConnectFailure(both) ?? '', /^Cannot connect to PostgreSQL at \[::1\]:5432 \(ECONNREFUSED\)/);
  });

  it('leaves any other error to its stack: a statement that failed, a bug', () => {
    assert.equal(describeConnectFailure(pgError('duplicate key value violates unique constraint', { code: '23505' }), target), undefined);
    assert.equal(describeConnectFailure(new TypeError("Cannot read properties of undefined (reading 'x')")), undefined);
    assert.equal(describeConnectFailure('a string'), undefined);
  });

  it('describeFatal prints such a failure as its line alone, never a stack', () => {
    const cause = pgError('password authentication failed for user "app"', { code: '28P01' });
    const wrapped = new DatabaseConnectError(describeConnectFailure(cause, target)!, { cause });
    assert.equal(describeFatal(wrapped), wrapped.message);
    // One that did not come through firstConnect: the server's refusal alone, still one line.
    assert.equal(describeFatal(cause), describeConnectFailure(cause));
    assert.doesNotMatch(describeFatal(cause), /\n|\bat /);
  });
});

describe('firstConnect', () => {
  const warnings: string[] = [];
  const logger = { log: () => undefined, error: () => undefined, warn: (line: string) => warnings.push(line) } as LoggerService;
  const refused = () => pgError('connect ECONNREFUSED 10.0.0.7:6432', { code: 'ECONNREFUSED', address: '10.0.0.7', port: 6432 });

  it('tries again while nothing listens, one warning line a try, and answers what the connection made', async () => {
    warnings.length = 0;
    let calls = 0;
    const made = await firstConnect(
      async () => {
        if (++calls < 3) throw refused();
        return 'data source';
      },
      target,
      logger,
      { tries: 5, pauseMs: 1 },
    );
    assert.equal(made, 'data source');
    assert.equal(calls, 3);
    assert.deepEqual(
      warnings.map((line) => line.replace(/: nothing listens there.*;/, ';')),
      [
        'Cannot connect to PostgreSQL at db.internal:6432 (ECONNREFUSED); trying again in 0.001 s (1 of 5)',
        'Cannot connect to PostgreSQL at db.internal:6432 (ECONNREFUSED); trying again in 0.001 s (2 of 5)',
      ],
    );
  });

  it('gives up after the last try with a DatabaseConnectError, the driver error its cause', async () => {
    let calls = 0;
    const error = refused();
    await assert.rejects(
      firstConnect(
        () => {
          calls++;
          return Promise.reject(error);
        },
        target,
        logger,
        { tries: 3, pauseMs: 1 },
      ),
      (thrown: unknown) => {
        assert.ok(thrown instanceof DatabaseConnectError);
        assert.match(thrown.message, /^Cannot connect to PostgreSQL at db\.internal:6432 \(ECONNREFUSED\)/);
        assert.equal(thrown.cause, error);
        return true;
      },
    );
    assert.equal(calls, 3);
  });

  for (const [name, error] of [
    ['a host name that does not resolve', pgError('getaddrinfo ENOTFOUND db.internal', { code: 'ENOTFOUND', hostname: 'db.internal' })],
    ['a database that does not exist', pgError('database "app" does not exist', { code: '3D000' })],
    ['a wrong password', pgError('password authentication failed for user "app"', { code: '28P01' })],
  ] as const) {
    it(`fails at once on ${name}: waiting would not mend it`, async () => {
      let calls = 0;
      await assert.rejects(
        firstConnect(
          () => {
            calls++;
            return Promise.reject(error);
          },
          target,
          logger,
          { tries: 5, pauseMs: 1 },
        ),
        DatabaseConnectError,
      );
      assert.equal(calls, 1);
    });
  }

  it('throws any other error as it is, at once (a schema refused, a failed migration)', async () => {
    const refusedSchema = new Error('this schema holds another application');
    await assert.rejects(
      firstConnect(() => Promise.reject(refusedSchema), target, logger, { tries: 5, pauseMs: 1 }),
      (thrown) => thrown === refusedSchema,
    );
  });
});
