import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ArgumentsHost } from '@nestjs/common';
import { firstValueFrom } from 'rxjs';
import { answerOtherTransport, OtherTransportRefusedError } from './other-transports';

/** A gateway's host: what its client was sent. */
function wsHost(emitted: Array<[string, unknown]>): ArgumentsHost {
  const client = { emit: (event: string, data: unknown) => emitted.push([event, data]) };
  return { getType: () => 'ws', switchToWs: () => ({ getClient: () => client }) } as unknown as ArgumentsHost;
}

/** What the filter is handed to report: the message of each error it would log. */
function reportsInto(errors: unknown[]): (exception: unknown) => void {
  return (exception) => void errors.push(exception instanceof Error ? exception.message : exception);
}

/** A transport exception of @nestjs/microservices' or @nestjs/websockets' shape. */
class TransportException extends Error {
  constructor(private readonly payload: string | object) {
    super(typeof payload === 'string' ? payload : 'Transport exception');
  }
  getError() {
    return this.payload;
  }
}

describe('answers for the other transports of a host', () => {
  it("sends a gateway's client an exception event, as Nest's own filter for it does", () => {
    const emitted: Array<[string, unknown]> = [];
    const errors: unknown[] = [];
    assert.equal(answerOtherTransport(new TransportException('no such room'), wsHost(emitted), reportsInto(errors)), undefined);
    answerOtherTransport(new TransportException({ code: 42 }), wsHost(emitted), reportsInto(errors));
    answerOtherTransport(new Error('a bug'), wsHost(emitted), reportsInto(errors));
    assert.deepEqual(emitted, [
      ['exception', { status: 'error', message: 'no such room' }],
      ['exception', { code: 42 }],
      ['exception', { status: 'error', message: 'Internal server error' }],
    ]);
    assert.deepEqual(errors, ['a bug'], 'only the unknown error is logged');
  });

  it("answers a message handler's client with an error, its details only when it is the transport's own", async () => {
    const rpcHost = { getType: () => 'rpc' } as unknown as ArgumentsHost;
    const errors: unknown[] = [];
    await assert.rejects(firstValueFrom(answerOtherTransport(new TransportException('nope'), rpcHost, reportsInto(errors))!), (e) => {
      assert.deepEqual(e, { status: 'error', message: 'nope' });
      return true;
    });
    await assert.rejects(firstValueFrom(answerOtherTransport(new Error('select * from users'), rpcHost, reportsInto(errors))!), (e) => {
      assert.deepEqual(e, { status: 'error', message: 'Internal server error' });
      return true;
    });
    assert.deepEqual(errors, ['select * from users']);
  });

  it('throws on what any other context (a GraphQL resolver) gets, as Nest does for it', () => {
    const graphql = { getType: () => 'graphql' } as unknown as ArgumentsHost;
    const error = new Error('resolver');
    assert.throws(
      () => answerOtherTransport(error, graphql, reportsInto([])),
      (e) => e === error,
    );
  });

  it("throws SessionGuard's refusal of a resolver on unreported (the guard logged it), and its message names no class or method", () => {
    const graphql = { getType: () => 'graphql', getClass: () => class OrdersResolver {}, getHandler: () => function orders() {} };
    const refusal = new OtherTransportRefusedError(graphql as never);
    const reported: unknown[] = [];
    assert.throws(
      () => answerOtherTransport(refusal, graphql as unknown as ArgumentsHost, (e) => reported.push(e)),
      (e) => e === refusal,
    );
    const rpcHost = { getType: () => 'rpc' } as unknown as ArgumentsHost;
    void answerOtherTransport(refusal, rpcHost, (e) => reported.push(e));
    assert.deepEqual(reported, []);
    assert.equal(refusal.message, 'Forbidden');
    assert.match(refusal.detail, /OrdersResolver\.orders is a handler of another transport \(graphql\)/);
  });
});
