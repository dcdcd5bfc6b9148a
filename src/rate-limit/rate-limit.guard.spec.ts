import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Reflector } from '@nestjs/core';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host.js';
import { SkipThrottle, Throttle, ThrottlerException, type ThrottlerModuleOptions } from '@nestjs/throttler';
import type { DataSource } from 'typeorm';
import type { ConfigService } from '@nestjs/config';
import type { AppConfig } from '../config/config';
import { PgThrottlerStorage } from './pg-throttler.storage';
import { RateLimitGuard } from './rate-limit.guard';

class Routes {
  open(): void {}
  @Throttle({ default: { limit: 2, ttl: 60_000 } })
  strict(): void {}
  @SkipThrottle()
  probe(): void {}
  @Throttle({ default: { limit: () => 1 } })
  computed(): void {}
  // What a host writes to limit guesses per account rather than per address.
  @Throttle({ default: { limit: 2, ttl: 60_000, getTracker: (req) => String((req as { body?: { email?: string } }).body?.email) } })
  perEmail(): void {}
  @Throttle({ default: { generateKey: () => 'everyone' } })
  oneForAll(): void {}
  @Throttle({ default: { generateKey: () => 'everyone' } })
  alsoForAll(): void {}
}

@SkipThrottle()
class SkippedRoutes {
  probe(): void {}
  @SkipThrottle({ default: false })
  counted(): void {}
}

class RecordingReply {
  readonly sent: Record<string, string | number> = {};
  header(name: string, value: string | number): this {
    this.sent[name.toLowerCase()] = value;
    return this;
  }
  headers(values: Record<string, string | number>): this {
    for (const [name, value] of Object.entries(values)) this.header(name, value);
    return this;
  }
}

const OPTIONS: ThrottlerModuleOptions = { throttlers: [{ name: 'default', limit: 3, ttl: 60_000, blockDuration: 30_000 }] };

function setUp(options: ThrottlerModuleOptions = OPTIONS) {
  // Counting never touches the database (only the periodic sync does), so none is given.
  const storage = new PgThrottlerStorage(
    {} as DataSource,
    { get: () => 'a-pepper-for-the-counter-keys' } as unknown as ConfigService<AppConfig, true>,
  );
  const guard = new RateLimitGuard(options, storage, new Reflector());
  /** The in-memory counters' keys (RateLimitCounters' map). */
  const counterKeys = () => [...(storage as unknown as { counters: { counters: Map<string, unknown> } }).counters.counters.keys()];
  const call = (cls: new () => object, method: string, ip = '203.0.113.7', body?: object) => {
    const reply = new RecordingReply();
    const handler = (cls.prototype as Record<string, () => void>)[method];
    const context = new ExecutionContextHost([{ ip, headers: {}, body }, reply], cls as never, handler);
    // Routes whose settings are numbers are decided synchronously: a boolean, not a promise.
    const activate = (): boolean => {
      const decided = guard.canActivate(context);
      if (typeof decided !== 'boolean') throw new Error('expected a synchronous decision');
      return decided;
    };
    return { reply, activate, activateLater: () => guard.canActivate(context) };
  };
  return { call, counterKeys };
}

describe('RateLimitGuard', () => {
  it('decides synchronously, counts every route of an IP together and sends the X-RateLimit headers', () => {
    const { call } = setUp();
    const first = call(Routes, 'open');
    assert.equal(first.activate(), true);
    assert.deepEqual(first.reply.sent, { 'x-ratelimit-limit': 3, 'x-ratelimit-remaining': 2, 'x-ratelimit-reset': 60 });
    call(Routes, 'open').activate();
    assert.equal(call(Routes, 'open').activate(), true);
    const refused = call(Routes, 'open');
    assert.throws(() => refused.activate(), ThrottlerException);
    // While blocked: Remaining 0, Reset and Retry-After the end of the block.
    assert.deepEqual(refused.reply.sent, { 'x-ratelimit-limit': 3, 'x-ratelimit-remaining': 0, 'x-ratelimit-reset': 30, 'retry-after': 30 });
    // Another IP has its own count; an IPv6 client counts per /64.
    assert.equal(call(Routes, 'open', '2001:db8::1').activate(), true);
    assert.equal(call(Routes, 'open', '2001:db8::2').reply.sent['x-ratelimit-remaining'], undefined);
    const sameSubnet = call(Routes, 'open', '2001:db8::2');
    sameSubnet.activate();
    assert.equal(sameSubnet.reply.sent['x-ratelimit-remaining'], 1);
  });

  it("applies @Throttle's values over the module's, per route", () => {
    const { call } = setUp();
    const strict = call(Routes, 'strict');
    strict.activate();
    assert.equal(strict.reply.sent['x-ratelimit-limit'], 2);
    call(Routes, 'strict').activate();
    assert.throws(() => call(Routes, 'strict').activate(), ThrottlerException);
  });

  it('counts a route with @Throttle values of its own on a counter of its own, as @nestjs/throttler does, not on the shared one', () => {
    const { call } = setUp();
    // The shared count of the address (3 a minute) is not the strict route's business, and back.
    call(Routes, 'open').activate();
    call(Routes, 'open').activate();
    const strict = call(Routes, 'strict');
    assert.equal(strict.activate(), true);
    assert.equal(strict.reply.sent['x-ratelimit-remaining'], 1);
    call(Routes, 'strict').activate();
    assert.throws(() => call(Routes, 'strict').activate(), ThrottlerException);
    // Its block holds that route only: the shared count still has one request left.
    const open = call(Routes, 'open');
    assert.equal(open.activate(), true);
    assert.equal(open.reply.sent['x-ratelimit-remaining'], 0);
  });

  it('counts nothing and sends no header on @SkipThrottle routes, on the handler or the class, unless the handler opts back in', () => {
    const { call } = setUp();
    for (const [cls, method] of [
      [Routes, 'probe'],
      [SkippedRoutes, 'probe'],
    ] as const) {
      const skipped = call(cls, method);
      for (let i = 0; i < 10; i++) assert.equal(skipped.activate(), true);
      assert.deepEqual(skipped.reply.sent, {});
    }
    const counted = call(SkippedRoutes, 'counted');
    counted.activate();
    assert.equal(counted.reply.sent['x-ratelimit-remaining'], 2);
  });

  it('counts nothing when skipIf says so (RATE_LIMIT_PER_MINUTE=0)', () => {
    const { call } = setUp({ ...OPTIONS, skipIf: () => true });
    const off = call(Routes, 'open');
    for (let i = 0; i < 10; i++) assert.equal(off.activate(), true);
    assert.deepEqual(off.reply.sent, {});
  });

  it("counts what a route's @Throttle getTracker or generateKey makes of the request, as @nestjs/throttler does, not its address", async () => {
    const { call } = setUp();
    // Two guesses at one account from two addresses, then a third from a third: refused.
    assert.equal(await call(Routes, 'perEmail', '203.0.113.1', { email: 'ada@example.com' }).activateLater(), true);
    assert.equal(await call(Routes, 'perEmail', '203.0.113.2', { email: 'ada@example.com' }).activateLater(), true);
    await assert.rejects(async () => call(Routes, 'perEmail', '203.0.113.3', { email: 'ada@example.com' }).activateLater(), ThrottlerException);
    // Another account from the first address is counted apart (until 0.29.0 all four were one address's count each).
    const other = call(Routes, 'perEmail', '203.0.113.1', { email: 'bob@example.com' });
    assert.equal(await other.activateLater(), true);
    assert.equal(other.reply.sent['x-ratelimit-remaining'], 1);
    // One key for every client: the module's limit (3) over all addresses together.
    // One key for every client: the module's limit (3) over all addresses together, and over
    // every route whose generateKey makes that key (the whole key, as in the library).
    for (const ip of ['198.51.100.1', '198.51.100.2']) assert.equal(await call(Routes, 'oneForAll', ip).activateLater(), true);
    assert.equal(await call(Routes, 'alsoForAll', '198.51.100.3').activateLater(), true);
    await assert.rejects(async () => call(Routes, 'oneForAll', '198.51.100.4').activateLater(), ThrottlerException);
    // The shared per-address count is not theirs: the first address still has all of it.
    assert.equal(call(Routes, 'open', '198.51.100.1').activate(), true);
  });

  it("keeps a route's tracker as a fixed-length digest, whatever its length", async () => {
    const { call, counterKeys } = setUp();
    await call(Routes, 'perEmail', '203.0.113.9', { email: 'x'.repeat(100_000) }).activateLater();
    const keys = counterKeys();
    assert.equal(keys.length, 1);
    assert.ok(keys[0].length < 100, keys[0].slice(0, 120));
  });

  it('resolves a setting given as a function on every request, as @nestjs/throttler does', async () => {
    const { call } = setUp();
    const first = call(Routes, 'computed');
    const decided = first.activateLater();
    assert.ok(decided instanceof Promise);
    assert.equal(await decided, true);
    assert.equal(first.reply.sent['x-ratelimit-limit'], 1);
    await assert.rejects(async () => call(Routes, 'computed').activateLater(), ThrottlerException);
  });
});
