import { Injectable, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import type { AppConfig } from '../config/config';
import { PgThrottlerStorage } from './pg-throttler.storage';

/**
 * Syncs the request counts every RATE_LIMIT_SYNC_INTERVAL ms, and a last time at shutdown.
 * A plain timer rather than @Cron: cron's resolution is a second, and each sync must wait for
 * the previous one. A provider of its own because the storage is registered under two tokens
 * and Nest would call its lifecycle hooks twice.
 */
@Injectable()
export class RateLimitSyncTask implements OnApplicationBootstrap, OnApplicationShutdown {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly storage: PgThrottlerStorage,
    private readonly config: ConfigService<AppConfig, true>,
  ) {}

  onApplicationBootstrap(): void {
    // RATE_LIMIT_PER_MINUTE=0: nothing is counted, so nothing is synced.
    if (this.config.get('RATE_LIMIT_PER_MINUTE', { infer: true }) === 0) return;
    this.schedule();
  }

  /**
   * The HTTP server is closed by now, so no hit comes after this flush. TypeORM closes its
   * DataSource in its own hook, which runs later: Nest shuts global modules down last.
   */
  async onApplicationShutdown(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.timer);
    await this.storage.sync();
  }

  private schedule(): void {
    const interval = this.config.get('RATE_LIMIT_SYNC_INTERVAL', { infer: true });
    // unref: a pending sync never keeps the process (or a test run) alive.
    this.timer = setTimeout(() => void this.tick(), interval).unref();
  }

  private async tick(): Promise<void> {
    try {
      await this.storage.sync();
    } finally {
      // The next sync is scheduled however this one ended.
      if (!this.stopped) this.schedule();
    }
  }
}
