import { Injectable } from '@nestjs/common';
import { Cron, CronExpression } from '@nestjs/schedule';
import { PgThrottlerStorage } from './pg-throttler.storage';

/**
 * Deletes finished counters from `rate_limits`. A provider of its own because ThrottlerModule
 * registers the storage under a second token, and the scheduler would see a cron on it twice.
 */
@Injectable()
export class RateLimitPruneTask {
  constructor(private readonly storage: PgThrottlerStorage) {}

  @Cron(CronExpression.EVERY_10_MINUTES, { name: 'rate-limit-prune', waitForCompletion: true })
  prune(): Promise<void> {
    return this.storage.prune();
  }
}
