import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { ConfigService } from '@nestjs/config';
import { ThrottlerModule } from '@nestjs/throttler';
import type { AppConfig } from '../config/config';
import { PgThrottlerStorage } from './pg-throttler.storage';
import { RateLimitGuard } from './rate-limit.guard';
import { RateLimitPruneTask } from './rate-limit-prune.task';
import { RateLimitSyncTask } from './rate-limit-sync.task';
import { RegistrationLimitService } from './registration-limit.service';

/** The per-IP limit's window, and how long an IP that went over it is refused. */
export const RATE_LIMIT_WINDOW_SECONDS = 60;

/** Holds the storage so ThrottlerModule's async factory can inject it. */
@Module({
  imports: [SessionaryConfigModule],
  providers: [PgThrottlerStorage, RateLimitPruneTask, RateLimitSyncTask, RegistrationLimitService],
  exports: [PgThrottlerStorage, RegistrationLimitService],
})
class RateLimitStorageModule {}

@Module({
  imports: [
    ThrottlerModule.forRootAsync({
      imports: [SessionaryConfigModule, RateLimitStorageModule],
      inject: [ConfigService, PgThrottlerStorage],
      useFactory: (config: ConfigService<AppConfig, true>, storage: PgThrottlerStorage) => {
        const perMinute = config.get('RATE_LIMIT_PER_MINUTE', { infer: true });
        return {
          throttlers: [
            {
              name: 'default',
              ttl: RATE_LIMIT_WINDOW_SECONDS * 1000,
              limit: Math.max(perMinute, 1),
              blockDuration: RATE_LIMIT_WINDOW_SECONDS * 1000,
            },
          ],
          storage,
          // 0 turns the limit off (nothing is counted, so nothing is synced).
          skipIf: () => perMinute === 0,
        };
      },
    }),
    // The guard counts through the storage directly (PgThrottlerStorage.hit).
    RateLimitStorageModule,
  ],
  providers: [RateLimitGuard],
  // The storage too, for /metrics (its prune's counts); and the registration limit, for AuthModule.
  exports: [RateLimitGuard, RateLimitStorageModule],
})
export class RateLimitModule {}
