import 'reflect-metadata';
import { describe, it, before, beforeEach, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  BadRequestException,
  ConflictException,
  ForbiddenException,
  HttpException,
  InternalServerErrorException,
  Logger,
  LoggerService,
  NotFoundException,
  ServiceUnavailableException,
} from '@nestjs/common';
import type { ArgumentsHost } from '@nestjs/common';
import { DatabaseError } from 'pg';
import { lastValueFrom, type Observable } from 'rxjs';
import { DataSource, QueryFailedError } from 'typeorm';
import { DatabaseOutageMonitor } from '../database/database-outage.monitor';
import { DatabaseNotReadyException } from './database-not-ready.exception';
import { AllExceptionsFilter, UNAVAILABLE_BODY } from './all-exceptions.filter';
import { InsufficientUserAuthenticationException } from './insufficient-user-authentication.exception';
import { OtherTransportRefusedError } from './other-transports';

const INTERNAL = { statusCode: 500, error: 'Internal Server Error', message: 'Internal server error' };

describe('AllExceptionsFilter.toBody', () => {
  const logged: unknown[][] = [];
  const warned: unknown[][] = [];
  const recorder: LoggerService = {
    log: () => {},
    warn: (...args: unknown[]) => void warned.push(args),
    debug: () => {},
    verbose: () => {},
    error: (...args: unknown[]) => void logged.push(args),
  };
  let filter: AllExceptionsFilter;

  before(() => Logger.overrideLogger(recorder));
  after(() => Logger.overrideLogger(false));
  beforeEach(() => {
    logged.length = 0;
    warned.length = 0;
    filter = new AllExceptionsFilter();
  });

  it('keeps the status and message list of a BadRequestException', () => {
    assert.deepEqual(filter.toBody(new BadRequestException(['email must be an email'])), {
      statusCode: 400,
      error: 'Bad Request',
      message: ['email must be an email'],
    });
    assert.equal(logged.length, 0);
  });

  it('keeps a NotFoundException as 404 with its message', () => {
    assert.deepEqual(filter.toBody(new NotFoundException('x')), { statusCode: 404, error: 'Not Found', message: 'x' });
  });

  it('keeps a ConflictException as 409', () => {
    assert.deepEqual(filter.toBody(new ConflictException('taken')), { statusCode: 409, error: 'Conflict', message: 'taken' });
  });

  it('uses the standard reason phrase for an HttpException built from a string', () => {
    assert.deepEqual(filter.toBody(new HttpException('Nope', 403)), { statusCode: 403, error: 'Forbidden', message: 'Nope' });
  });

  it('keeps a custom error label from the response object', () => {
    assert.deepEqual(filter.toBody(new ForbiddenException('no', { description: 'Locked' })), {
      statusCode: 403,
      error: 'Locked',
      message: 'no',
    });
  });

  it('logs a 5xx HttpException as one warning line, without a stack', () => {
    const body = filter.toBody(new InternalServerErrorException('detail for the log'));
    assert.equal(body.statusCode, 500);
    assert.equal(body.message, 'Internal server error');
    assert.equal(logged.length, 0);
    assert.equal(warned.length, 1);
    assert.match(String(warned[0][0]), /detail for the log/);
  });

  // Not "[object Object]", nor the object itself (whose fields are the thrower's, not the contract's): the status's reason phrase.
  it('gives a readable message for an HttpException whose response object has no message', () => {
    assert.deepEqual(filter.toBody(new HttpException({ reason: 'quota' }, 429)), {
      statusCode: 429,
      error: 'Too Many Requests',
      message: 'Too Many Requests',
    });
  });

  it('turns an untranslated unique violation into a bare 409 without any SQL', () => {
    const driverError = Object.assign(new Error('duplicate key value violates unique constraint "users_email_key"'), {
      code: '23505',
      detail: 'Key (email)=(alice@example.com) already exists.',
    });
    const error = new QueryFailedError('INSERT INTO "users"("email") VALUES ($1)', ['alice@example.com'], driverError);
    const body = filter.toBody(error);
    assert.deepEqual(body, { statusCode: 409, error: 'Conflict', message: 'Conflict' });
    const text = JSON.stringify(body);
    for (const leak of ['INSERT', 'users', 'alice@example.com', 'duplicate', '23505']) assert.ok(!text.includes(leak), leak);
  });

  it('turns any other query failure into the fixed 500, logged', () => {
    const driverError = Object.assign(new Error('insert or update violates foreign key constraint'), { code: '23503' });
    const body = filter.toBody(new QueryFailedError('INSERT INTO "sessions" ...', [], driverError));
    assert.deepEqual(body, INTERNAL);
    assert.equal(logged.length, 1);
  });

  it('turns any other Error into exactly the fixed 500 and keeps its details out of the body', () => {
    const error = new Error('connect ECONNREFUSED db-internal.example:5432 password=hunter2-XYZZY');
    const body = filter.toBody(error);
    assert.deepEqual(body, INTERNAL);
    const text = JSON.stringify(body);
    assert.ok(!text.includes('XYZZY'));
    assert.ok(!text.includes('ECONNREFUSED'));
    assert.ok(!text.includes('all-exceptions.filter'));
    // ...but the details do reach the log.
    assert.equal(logged.length, 1);
    assert.ok(logged[0].some((part) => typeof part === 'string' && part.includes('XYZZY')));
    assert.match(String(logged[0][0]), /Unhandled error on outside a request/);
  });

  it('names the route in the log when it has a request', () => {
    const request = { method: 'POST', routeOptions: { url: '/auth/login' } } as unknown as Parameters<AllExceptionsFilter['toBody']>[1];
    filter.toBody(new Error('boom'), request);
    assert.match(String(logged[0][0]), /Unhandled error on POST \/auth\/login/);
  });

  for (const thrown of [null, undefined, 'a string with secret-XYZZY', 42, { message: 'secret-XYZZY' }]) {
    it(`turns a thrown ${JSON.stringify(thrown) ?? 'undefined'} into the fixed 500`, () => {
      const body = filter.toBody(thrown);
      assert.deepEqual(body, INTERNAL);
      assert.ok(!JSON.stringify(body).includes('XYZZY'));
    });
  }

  it('keeps a Fastify body-too-large error as 413 with a plain message', () => {
    const error = Object.assign(new Error('Request body is too large: 2000000 > 1048576 bytes (internal detail)'), {
      statusCode: 413,
      code: 'FST_ERR_CTP_BODY_TOO_LARGE',
    });
    assert.deepEqual(filter.toBody(error), { statusCode: 413, error: 'Payload Too Large', message: 'Request body is too large' });
    assert.equal(logged.length, 0);
  });

  it('accepts a plain Fastify-style object as well', () => {
    assert.deepEqual(filter.toBody({ statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' }), {
      statusCode: 413,
      error: 'Payload Too Large',
      message: 'Request body is too large',
    });
  });

  it('answers bad JSON with a plain 400 that does not echo the body', () => {
    const error = Object.assign(new SyntaxError('Unexpected token } in JSON: {"password":"hunter2-XYZZY"'), {
      statusCode: 400,
      code: 'FST_ERR_CTP_INVALID_JSON_BODY',
    });
    assert.deepEqual(filter.toBody(error), { statusCode: 400, error: 'Bad Request', message: 'Body must be valid JSON' });
  });

  it('answers an empty JSON body with the same plain 400', () => {
    assert.deepEqual(filter.toBody({ statusCode: 400, code: 'FST_ERR_CTP_EMPTY_JSON_BODY' }), {
      statusCode: 400,
      error: 'Bad Request',
      message: 'Body must be valid JSON',
    });
  });

  it('answers an unsupported media type with 415 and a plain message', () => {
    assert.deepEqual(filter.toBody({ statusCode: 415, code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE', message: 'text/xml-XYZZY' }), {
      statusCode: 415,
      error: 'Unsupported Media Type',
      message: 'Unsupported content type; send application/json',
    });
  });

  it('answers another 4xx error object with the reason phrase only', () => {
    const body = filter.toBody({ statusCode: 404, code: 'FST_ERR_NOT_FOUND', message: 'Route GET:/secret-XYZZY not found' });
    assert.deepEqual(body, { statusCode: 404, error: 'Not Found', message: 'Not Found' });
  });

  it('still answers the fixed 500 for an error object carrying a 500 status', () => {
    const error = Object.assign(new Error('plugin crashed: secret-XYZZY'), { statusCode: 500, code: 'FST_ERR_SOMETHING' });
    assert.deepEqual(filter.toBody(error), INTERNAL);
    assert.equal(logged.length, 1);
  });

  it('answers the fixed 500 for a 3xx or a string status', () => {
    assert.deepEqual(filter.toBody({ statusCode: 302, message: 'secret-XYZZY' }), INTERNAL);
    assert.deepEqual(filter.toBody({ statusCode: '400', message: 'secret-XYZZY' }), INTERNAL);
  });

  describe('an unreachable database', () => {
    const adminShutdown = () =>
      Object.assign(new DatabaseError('terminating connection due to administrator command', 60, 'error'), { code: '57P01', severity: 'FATAL' });
    const refused = () => Object.assign(new Error('connect ECONNREFUSED db-internal.example:5432 password=hunter2-XYZZY'), { code: 'ECONNREFUSED' });

    it('answers the fixed 503, never 500, and logs one line without a stack', () => {
      for (const error of [new QueryFailedError('SELECT * FROM "users" WHERE secret-XYZZY', [], adminShutdown()), refused()]) {
        logged.length = 0;
        warned.length = 0;
        const body = filter.toBody(error);
        assert.deepEqual(body, UNAVAILABLE_BODY);
        assert.ok(!JSON.stringify(body).includes('XYZZY'));
        assert.equal(logged.length, 0);
        assert.equal(warned.length, 1);
        assert.ok(!String(warned[0][0]).includes('    at '), 'no stack');
        assert.ok(!String(warned[0][0]).includes('SELECT'), 'no SQL');
      }
    });

    it('answers a statement the database could not finish now (a timeout, a deadlock, a full disk) with the 503, one line without a stack or SQL, and no outage', () => {
      const monitor = new DatabaseOutageMonitor({ driver: {}, query: async () => [] } as unknown as DataSource);
      const monitored = new AllExceptionsFilter(monitor);
      try {
        for (const code of ['57014', '40P01', '40001', '55P03', '53100', '53200', '53400']) {
          logged.length = 0;
          warned.length = 0;
          const driverError = Object.assign(new DatabaseError('canceling statement due to statement timeout', 60, 'error'), { code });
          assert.deepEqual(monitored.toBody(new QueryFailedError('SELECT secret-XYZZY FROM sessions', [], driverError)), UNAVAILABLE_BODY, code);
          assert.equal(logged.length, 0, code);
          assert.equal(warned.length, 1, code);
          assert.match(String(warned[0][0]), new RegExp(`^Database busy on outside a request \\(SQLSTATE ${code}\\): ${code}: canceling statement`));
          assert.ok(!String(warned[0][0]).includes('XYZZY') && !String(warned[0][0]).includes('    at '), 'no SQL, no stack');
        }
        assert.equal(monitor.isDown, false, 'the server answers: no outage');
        // A statement that is wrong stays a 500 (a foreign key, above; a syntax error here).
        const syntax = Object.assign(new DatabaseError('syntax error at or near "FROM"', 60, 'error'), { code: '42601' });
        assert.deepEqual(monitored.toBody(new QueryFailedError('SELECT FROM', [], syntax)), INTERNAL);
      } finally {
        monitor.beforeApplicationShutdown();
      }
    });

    it("on a host's message handler (rpc), tells the outage monitor of an outage and says a busy database in one line, as on HTTP; anything else with its stack", async () => {
      const monitor = new DatabaseOutageMonitor({ driver: {}, query: async () => [] } as unknown as DataSource);
      const monitored = new AllExceptionsFilter(monitor);
      const rpc = { getType: () => 'rpc' } as unknown as ArgumentsHost;
      const answer = (error: unknown) =>
        lastValueFrom(monitored.catch(error, rpc) as Observable<never>).then(
          () => assert.fail('an answer'),
          (e: unknown) => e,
        );
      try {
        logged.length = 0;
        warned.length = 0;
        for (let i = 0; i < 3; i++) assert.deepEqual(await answer(refused()), { status: 'error', message: 'Internal server error' });
        assert.equal(monitor.isDown, true);
        assert.equal(logged.length, 0, 'no error line with a stack per message');
        assert.equal(warned.length, 1, 'one line for the outage');
        assert.match(String(warned[0][0]), /^Database unavailable/);
        const busy = Object.assign(new DatabaseError('canceling statement due to statement timeout', 60, 'error'), { code: '57014' });
        assert.deepEqual(await answer(new QueryFailedError('SELECT secret-XYZZY', [], busy)), { status: 'error', message: 'Internal server error' });
        assert.equal(warned.length, 2);
        assert.match(String(warned[1][0]), /^Database busy in a rpc handler \(SQLSTATE 57014\)/);
        assert.ok(!String(warned[1][0]).includes('XYZZY'), 'no SQL');
        await answer(new Error('a bug of the host'));
        assert.equal(logged.length, 1);
        assert.equal(logged[0][0], 'a bug of the host');
      } finally {
        monitor.beforeApplicationShutdown();
      }
    });

    it("answers SessionGuard's refusal of another transport's handler without a word more in the log (the guard said it), its client told `Forbidden` only", async () => {
      const resolverContext = {
        getType: () => 'graphql',
        getClass: () => class OrdersResolver {},
        getHandler: () => function orders() {},
      } as unknown as ArgumentsHost;
      const refusal = new OtherTransportRefusedError(resolverContext as never);
      // A GraphQL resolver's error goes on to GraphQL, which shows its client the message.
      assert.throws(
        () => filter.catch(refusal, resolverContext),
        (e) => e === refusal && (e as Error).message === 'Forbidden',
      );
      const rpc = { getType: () => 'rpc' } as unknown as ArgumentsHost;
      assert.deepEqual(await lastValueFrom(filter.catch(refusal, rpc) as Observable<never>).catch((e: unknown) => e), {
        status: 'error',
        message: 'Internal server error',
      });
      assert.deepEqual([logged, warned], [[], []]);
    });

    it("answers the readiness check's 503 with the same body", () => {
      assert.deepEqual(filter.toBody(new DatabaseNotReadyException({ status: 'error', error: { database: { status: 'down' } } })), UNAVAILABLE_BODY);
    });

    it("tells the outage monitor of the readiness check's 503 only: another 503 raised on purpose (a host's route) is no outage", () => {
      const monitor = new DatabaseOutageMonitor({ driver: {}, query: async () => [] } as unknown as DataSource);
      const monitored = new AllExceptionsFilter(monitor);
      try {
        assert.deepEqual(monitored.toBody(new ServiceUnavailableException('down for maintenance')), UNAVAILABLE_BODY);
        assert.equal(monitor.isDown, false);
        assert.equal(warned.length, 1);
        assert.match(String(warned[0][0]), /^503 on outside a request: .*down for maintenance/);
        assert.deepEqual(monitored.toBody(new DatabaseNotReadyException({ status: 'error' })), UNAVAILABLE_BODY);
        assert.equal(monitor.isDown, true);
        assert.match(String(warned[1][0]), /^Database unavailable/);
      } finally {
        monitor.beforeApplicationShutdown();
      }
    });

    it('with the outage monitor, logs one line for a burst of failures', () => {
      const monitor = new DatabaseOutageMonitor({ driver: {}, query: async () => [] } as unknown as DataSource);
      const monitored = new AllExceptionsFilter(monitor);
      try {
        for (let i = 0; i < 200; i++) assert.equal(monitored.toBody(refused()).statusCode, 503);
        assert.equal(warned.length, 1);
        assert.match(String(warned[0][0]), /^Database unavailable \(ECONNREFUSED/);
      } finally {
        monitor.beforeApplicationShutdown();
      }
    });

    it('sends Retry-After with the 503', () => {
      const headers: Record<string, string> = {};
      let status = 0;
      let sent: unknown;
      const reply = {
        header(name: string, value: string) {
          headers[name.toLowerCase()] = value;
          return reply;
        },
        status(code: number) {
          status = code;
          return reply;
        },
        send(body: unknown) {
          sent = body;
          return reply;
        },
      };
      const host = {
        getType: () => 'http',
        switchToHttp: () => ({ getResponse: () => reply, getRequest: () => ({ method: 'GET', routeOptions: { url: '/users/me' } }) }),
      } as unknown as ArgumentsHost;
      filter.catch(new QueryFailedError('SELECT 1', [], adminShutdown()), host);
      assert.equal(status, 503);
      assert.equal(headers['retry-after'], '5');
      assert.deepEqual(sent, UNAVAILABLE_BODY);
    });
  });
});

describe('AllExceptionsFilter and step-up', () => {
  const send = (exception: unknown) => sendWith({}, exception);
  /** The filter's answer on a reply that already carries `headers` (as a guard may have set). */
  function sendWith(headers: Record<string, string>, exception: unknown): { status: number; headers: Record<string, string>; body: unknown } {
    const sent = { status: 0, headers: { ...headers }, body: undefined as unknown };
    const reply = {
      header(name: string, value: string) {
        sent.headers[name.toLowerCase()] = value;
        return reply;
      },
      hasHeader: (name: string) => name.toLowerCase() in sent.headers,
      status(code: number) {
        sent.status = code;
        return reply;
      },
      send(body: unknown) {
        sent.body = body;
        return reply;
      },
    };
    const host = {
      getType: () => 'http',
      switchToHttp: () => ({ getResponse: () => reply, getRequest: () => ({ method: 'DELETE', routeOptions: { url: '/sessions' } }) }),
    } as unknown as ArgumentsHost;
    new AllExceptionsFilter().catch(exception, host);
    return sent;
  }

  it("answers InsufficientUserAuthenticationException with 401, Nest's body and RFC 9470's challenge", () => {
    const sent = send(new InsufficientUserAuthenticationException(300, 'Reauthenticate first'));
    assert.equal(sent.status, 401);
    assert.deepEqual(sent.body, { statusCode: 401, error: 'Unauthorized', message: 'Reauthenticate first' });
    assert.equal(
      sent.headers['www-authenticate'],
      'Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age=300',
    );
  });

  it('gives any other 401 the bare scheme (refused credentials in the body), keeping a challenge SessionGuard wrote', () => {
    const sent = send(new HttpException('Current password is required and must be correct', 401));
    assert.equal(sent.status, 401);
    assert.equal(sent.headers['www-authenticate'], 'Bearer');
    const guarded = sendWith({ 'www-authenticate': 'Bearer error="invalid_token"' }, new HttpException('Unauthorized', 401));
    assert.equal(guarded.headers['www-authenticate'], 'Bearer error="invalid_token"');
    assert.equal(send(new HttpException('Forbidden', 403)).headers['www-authenticate'], undefined);
  });
});
