import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { after, afterEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import type { QueryRunner } from 'typeorm';
import { shippedPieceName } from './audit-export-format';
import { HttpShipDestination } from './audit-ship-http';

/** How long a test waits for the delivery to fail before it calls the wait unbounded. */
const GIVE_UP_MS = 8_000;

/** A piece of two lines; the runner is never reached (nothing is delivered, nothing recorded). */
async function deliverTo(destination: HttpShipDestination): Promise<{ error: Error; ms: number }> {
  const started = performance.now();
  const lines = Readable.from(['{"seq":"1"}\n', '{"seal":"x"}\n']);
  const outcome = await Promise.race([
    destination.deliver({ afterSeq: '0', throughSeq: '1', lines }, {} as QueryRunner).then(
      () => new Error('delivered'),
      (error: Error) => error,
    ),
    sleep(GIVE_UP_MS).then(() => new Error(`still waiting after ${GIVE_UP_MS / 1000} s`)),
  ]);
  return { error: outcome, ms: performance.now() - started };
}

/** The destination with shorter limits than the service's (30 s idle, 32 KiB/s). */
function shortened(url: string, limits: { idleTimeoutMs: number; minBytesPerSecond: number }): HttpShipDestination {
  return Object.assign(new HttpShipDestination(url, undefined), limits);
}

describe('HttpShipDestination: how long a piece may take', () => {
  const cleanups: Array<() => Promise<unknown> | void> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  /**
   * A port whose connections are never answered, as a firewall that drops them: a listener
   * with a backlog of 1 (in a thread that never accepts), its queue filled, so that the
   * kernel drops the next connection's SYNs and its connect() waits.
   */
  async function blackHole(): Promise<number> {
    const flag = new Int32Array(new SharedArrayBuffer(4));
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const server = require('node:net').createServer();
       server.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
         parentPort.postMessage(server.address().port);
         setImmediate(() => Atomics.wait(workerData, 0, 0, 60000));
       });`,
      { eval: true, workerData: flag },
    );
    const port = await new Promise<number>((resolve) => worker.once('message', resolve));
    const queued: Socket[] = [];
    for (let i = 0; i < 4; i++) queued.push(connect(port, '127.0.0.1').on('error', () => undefined));
    cleanups.push(async () => {
      Atomics.store(flag, 0, 1);
      Atomics.notify(flag, 0);
      await worker.terminate();
      for (const socket of queued) socket.destroy();
    });
    await sleep(200);
    return port;
  }

  async function listen(server: Server): Promise<string> {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    });
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}/ingest`;
  }

  it('gives up on a host that never answers the connection after the idle timeout, not the system’s connect timeout', async () => {
    const port = await blackHole();
    const { error, ms } = await deliverTo(shortened(`http://127.0.0.1:${port}/ingest`, { idleTimeoutMs: 500, minBytesPerSecond: 32 * 1024 }));
    assert.match(error.message, /^http:\/\/127\.0\.0\.1:\d+\/…: no progress for 0\.5 s$/);
    assert.ok(ms < 3_000, `${ms} ms`);
  });

  it('gives up on a receiver that keeps the piece going, a byte at a time, slower than the minimum rate', async () => {
    // Reads the piece, then answers a byte every 100 ms and never ends: never idle, never done.
    const url = await listen(
      createServer((request, response) => {
        request.resume();
        request.on('end', () => {
          response.writeHead(200, { 'content-type': 'text/plain' });
          const drip = setInterval(() => response.write('.'), 100);
          response.on('close', () => clearInterval(drip));
        });
      }),
    );
    // 1 s, plus the piece's few bytes at a megabyte a second.
    const { error, ms } = await deliverTo(shortened(url, { idleTimeoutMs: 1_000, minBytesPerSecond: 1_000_000 }));
    assert.match(error.message, /:\d+\/…: the piece went slower than 1000000 bytes a second \(\d+ bytes sent in 1 s\)/);
    assert.ok(ms < 3_000, `${ms} ms`);
  });

  it('gives a piece more time as its bytes go: one sent at the minimum rate or faster is not cut off', async () => {
    const url = await listen(
      createServer((request, response) => {
        request.resume();
        request.on('end', () => response.writeHead(503).end());
      }),
    );
    const destination = shortened(url, { idleTimeoutMs: 500, minBytesPerSecond: 32 * 1024 });
    // 16 KiB every 100 ms (160 KiB/s) for 1.5 s: three times the idle timeout's length, within
    // what the bytes earn at 32 KiB/s; then the receiver's answer.
    async function* slowPiece(): AsyncGenerator<string> {
      for (let i = 0; i < 15; i++) {
        await sleep(100);
        yield `${'x'.repeat(16 * 1024 - 1)}\n`;
      }
    }
    const started = performance.now();
    await assert.rejects(
      destination.deliver({ afterSeq: '0', throughSeq: '1', lines: Readable.from(slowPiece()) }, {} as QueryRunner),
      /:\d+\/… answered 503 to piece/,
    );
    assert.ok(performance.now() - started > 1_400, 'it took longer than the idle timeout');
  });

  it('names the endpoint by its origin only in what it throws: a collector may take its token in the path or the query', async () => {
    const url = await listen(
      createServer((request, response) => {
        request.resume();
        request.on('end', () => response.writeHead(503).end());
      }),
    );
    const origin = new URL(url).origin;
    const destination = new HttpShipDestination(`${origin}/services/T0/B0/hook-token-0123?key=query-token-4567`, undefined);
    assert.equal(destination.description, `${origin}/…`);
    const { error } = await deliverTo(destination);
    assert.equal(error.message, `${origin}/… answered 503 to piece ${shippedPieceName('0', '1')}`);
    assert.equal(new HttpShipDestination(`${origin}/`, undefined).description, origin, 'a root path hides nothing');
    assert.equal(new HttpShipDestination(`${origin}?key=query-token-4567`, undefined).description, origin);
  });

  after(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
});
