import { ExecutionContext, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import {
  InjectThrottlerOptions,
  InjectThrottlerStorage,
  ThrottlerGuard,
  type ThrottlerLimitDetail,
  type ThrottlerModuleOptions,
  type ThrottlerStorage,
} from '@nestjs/throttler';
import { MemoizedReflector } from '../common/memoized-reflector';

/**
 * The general per-IP request limit over every route together (the default key would count
 * each route separately). The IP is Fastify's request.ip, which believes X-Forwarded-For only
 * when TRUST_PROXY says so. @SkipThrottle and @Throttle work as in @nestjs/throttler; their
 * metadata is read once per route, not on every request.
 */
@Injectable()
export class RateLimitGuard extends ThrottlerGuard {
  constructor(@InjectThrottlerOptions() options: ThrottlerModuleOptions, @InjectThrottlerStorage() storage: ThrottlerStorage, reflector: Reflector) {
    super(options, storage, new MemoizedReflector(reflector));
  }

  protected override generateKey(_context: ExecutionContext, tracker: string, throttlerName: string): string {
    return `${throttlerName}:${tracker}`;
  }

  /**
   * The limit's own 429 carries the X-RateLimit-* headers too (@nestjs/throttler sends only
   * Retry-After there), so a client pacing itself by them sees Remaining fall to 0 and when it
   * may send again, rather than the headers vanishing when they matter most. Reset is then the
   * end of the block, like Retry-After.
   */
  protected override async throwThrottlingException(context: ExecutionContext, detail: ThrottlerLimitDetail): Promise<void> {
    const { res } = this.getRequestResponse(context);
    this.setResponseHeader(res, 'X-RateLimit-Limit', detail.limit);
    this.setResponseHeader(res, 'X-RateLimit-Remaining', 0);
    this.setResponseHeader(res, 'X-RateLimit-Reset', detail.timeToBlockExpire);
    return super.throwThrottlingException(context, detail);
  }
}
