import 'reflect-metadata';
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Client, DatabaseError, Pool } from 'pg';
import { QueryFailedError, QueryRunnerAlreadyReleasedError, QueryRunnerProviderAlreadyReleasedError, TypeORMError } from 'typeorm';
import { isDatabaseUnavailable } from './pg-errors';

/** As pg-protocol's parser builds a server's ErrorResponse: the message, then the fields. */
function serverError(code: string, message: string, severity = 'FATAL'): DatabaseError {
  const error = new DatabaseError(message, message.length + 40, 'error');
  Object.assign(error, { severity, code });
  return error;
}

/** As TypeORM's PostgresQueryRunner.query() wraps whatever the driver rejected with. */
function wrapped(driverError: Error): QueryFailedError {
  return new QueryFailedError('SELECT 1', [], driverError);
}

function listen(onConnection: (socket: net.Socket) => void): Promise<net.Server> {
  return new Promise((resolve) => {
    const server = net.createServer(onConnection);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

const portOf = (server: net.Server) => (server.address() as net.AddressInfo).port;

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a rejection');
}

describe('isDatabaseUnavailable: errors pg raises itself (real, from local sockets)', () => {
  let closedPort: number;
  let silent: net.Server; // accepts and never answers: a hung server or a black-holed network
  let hangingUp: net.Server; // accepts and closes at once: a server going away
  const sockets = new Set<net.Socket>();

  before(async () => {
    const probe = await listen(() => undefined);
    closedPort = portOf(probe);
    await new Promise((resolve) => probe.close(resolve));
    silent = await listen((socket) => void sockets.add(socket));
    hangingUp = await listen((socket) => socket.destroy());
  });
  after(async () => {
    for (const socket of sockets) socket.destroy();
    await Promise.all([silent, hangingUp].map((server) => new Promise((resolve) => server.close(resolve))));
  });

  it('ECONNREFUSED from a client connect (server stopped)', async () => {
    const error = await rejection(new Client({ host: '127.0.0.1', port: closedPort }).connect());
    assert.equal((error as NodeJS.ErrnoException).code, 'ECONNREFUSED');
    assert.equal(isDatabaseUnavailable(error), true);
    assert.equal(isDatabaseUnavailable(wrapped(error)), true);
  });

  it('ECONNREFUSED from a pool checkout, unwrapped (TypeORM passes connect errors through)', async () => {
    const pool = new Pool({ host: '127.0.0.1', port: closedPort });
    try {
      const error = await rejection(pool.connect());
      assert.equal(isDatabaseUnavailable(error), true);
    } finally {
      await pool.end();
    }
  });

  it("'Connection terminated unexpectedly' (the server closed the socket)", async () => {
    const error = await rejection(new Client({ host: '127.0.0.1', port: portOf(hangingUp) }).connect());
    assert.equal(error.message, 'Connection terminated unexpectedly');
    assert.equal(isDatabaseUnavailable(error), true);
    assert.equal(isDatabaseUnavailable(wrapped(error)), true);
  });

  it("pg-pool's 'Connection terminated due to connection timeout' and 'timeout exceeded when trying to connect'", async () => {
    const pool = new Pool({ host: '127.0.0.1', port: portOf(silent), max: 1, connectionTimeoutMillis: 100 });
    pool.on('error', () => undefined);
    try {
      // The first checkout opens the only connection; the second waits in the queue for it.
      const [opening, queued] = await Promise.all([rejection(pool.connect()), rejection(pool.connect())]);
      assert.equal(opening.message, 'Connection terminated due to connection timeout');
      assert.equal(queued.message, 'timeout exceeded when trying to connect');
      for (const error of [opening, queued]) {
        assert.equal(isDatabaseUnavailable(error), true, error.message);
        assert.equal(isDatabaseUnavailable(wrapped(error)), true, error.message);
      }
    } finally {
      await pool.end();
    }
  });

  it("a plain client's own connect timeout ('timeout expired')", async () => {
    const error = await rejection(new Client({ host: '127.0.0.1', port: portOf(silent), connectionTimeoutMillis: 100 }).connect());
    assert.equal(error.message, 'timeout expired');
    assert.equal(isDatabaseUnavailable(error), true);
  });

  it('a query on a client whose connection was lost', async () => {
    const client = new Client({ host: '127.0.0.1', port: closedPort });
    client.on('error', () => undefined);
    await rejection(client.connect());
    const error = await rejection(client.query('SELECT 1'));
    assert.equal(isDatabaseUnavailable(error), true, error.message);
  });
});

describe('isDatabaseUnavailable: errors the server reports (SQLSTATE)', () => {
  const unavailable: [string, string][] = [
    ['57P01', 'terminating connection due to administrator command'],
    ['57P02', 'terminating connection because of crash of another server process'],
    ['57P03', 'the database system is starting up'],
    ['57P03', 'the database system is shutting down'],
    ['08000', 'connection exception'],
    ['08001', 'could not connect to server'],
    ['08003', 'connection does not exist'],
    ['08004', 'server rejected the connection'],
    ['08006', 'connection failure'],
    ['53300', 'sorry, too many clients already'],
  ];
  for (const [code, message] of unavailable) {
    it(`${code} (${message}), alone and wrapped in a QueryFailedError`, () => {
      assert.equal(isDatabaseUnavailable(serverError(code, message)), true);
      assert.equal(isDatabaseUnavailable(wrapped(serverError(code, message))), true);
    });
  }

  const statementErrors: [string, string][] = [
    ['23505', 'duplicate key value violates unique constraint "users_email_key"'],
    ['23503', 'insert or update on table "sessions" violates foreign key constraint'],
    ['42601', 'syntax error at or near "SELEC"'],
    ['42P01', 'relation "nope" does not exist'],
    ['57014', 'canceling statement due to statement timeout'],
    ['40001', 'could not serialize access due to concurrent update'],
    ['22P02', 'invalid input syntax for type uuid'],
  ];
  for (const [code, message] of statementErrors) {
    it(`not ${code} (${message}): the statement failed, the database is there`, () => {
      assert.equal(isDatabaseUnavailable(serverError(code, message, 'ERROR')), false);
      assert.equal(isDatabaseUnavailable(wrapped(serverError(code, message, 'ERROR'))), false);
    });
  }
});

describe('isDatabaseUnavailable: other shapes', () => {
  it("Node's AggregateError from a connect to several addresses, with or without its own code", () => {
    const refused = (address: string) =>
      Object.assign(new Error(`connect ECONNREFUSED ${address}:5432`), { code: 'ECONNREFUSED', errno: -111, syscall: 'connect' });
    const inner = [refused('::1'), refused('127.0.0.1')];
    assert.equal(isDatabaseUnavailable(Object.assign(new AggregateError(inner), { code: 'ECONNREFUSED' })), true);
    assert.equal(isDatabaseUnavailable(new AggregateError(inner)), true);
  });

  it("TypeORM's QueryRunnerAlreadyReleasedError (a transaction's connection died and TypeORM released its runner)", () => {
    assert.equal(isDatabaseUnavailable(new QueryRunnerAlreadyReleasedError()), true);
    // The same, met through EntityManager.query (the audit writer's statements).
    assert.equal(isDatabaseUnavailable(new QueryRunnerProviderAlreadyReleasedError()), true);
  });

  it('a connection error given as the cause of another error', () => {
    const cause = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
    assert.equal(isDatabaseUnavailable(new Error('transaction failed', { cause })), true);
  });

  it('is false for unrelated errors and values', () => {
    for (const value of [
      new Error('boom'),
      new TypeORMError('Driver not Connected'),
      new Error('some message that merely mentions Connection terminated'),
      { message: 'Connection terminated unexpectedly' }, // not an Error: no driver raised it
      Object.assign(new Error('Request body is too large'), { code: 'FST_ERR_CTP_BODY_TOO_LARGE', statusCode: 413 }),
      null,
      undefined,
      'ECONNREFUSED',
      42,
    ]) {
      assert.equal(isDatabaseUnavailable(value), false, String((value as Error | null)?.message ?? value));
    }
  });

  it('stops at a cause cycle', () => {
    const a = new Error('a');
    const b = new Error('b', { cause: a });
    Object.assign(a, { cause: b });
    assert.equal(isDatabaseUnavailable(a), false);
  });
});
