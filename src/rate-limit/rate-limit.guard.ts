import { ExecutionContext, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { InjectThrottlerOptions, InjectThrottlerStorage, ThrottlerGuard, type ThrottlerModuleOptions, type ThrottlerStorage } from '@nestjs/throttler';
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
}
