import { ExecutionContext, Injectable } from '@nestjs/common';
import { ThrottlerGuard } from '@nestjs/throttler';

/**
 * The general per-IP request limit over every route together (the default key would count
 * each route separately). The IP is Fastify's request.ip, which believes X-Forwarded-For only
 * when TRUST_PROXY says so.
 */
@Injectable()
export class RateLimitGuard extends ThrottlerGuard {
  protected override generateKey(_context: ExecutionContext, tracker: string, throttlerName: string): string {
    return `${throttlerName}:${tracker}`;
  }
}
