import { Logger } from '@nestjs/common';
import { Client } from 'pg';
import type { SessionCache } from './session-cache';

export const SESSION_CHANNEL = 'sessionary_sessions';

export interface ListenerOptions {
  url: string;
  /** How often the connection is probed (and the clock offset measured again). */
  heartbeatMs?: number;
  /** Longest pause between reconnection attempts. */
  maxBackoffMs?: number;
}

/**
 * The one listening connection of an instance: a plain `pg` client outside the pool (a pooled
 * connection can be handed to someone else, and a transaction-pooling proxy cannot hold a
 * LISTEN). While it listens, the cache is trusted; the moment it fails, the cache is flushed
 * and distrusted (the session check reads the database) until a new connection listens again,
 * which flushes once more before the cache is trusted.
 *
 * It also measures the offset of the database's clock, so deadlines (set with the database's
 * now()) are compared on the same clock without a query.
 */
export class SessionChangeListener {
  private readonly logger = new Logger(SessionChangeListener.name);
  private readonly heartbeatMs: number;
  private readonly maxBackoffMs: number;
  private client: Client | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private backoffMs = 0;
  private stopped = false;
  private lostLogged = false;
  /** Database clock minus this process's clock, in ms. */
  private offsetMs = 0;
  /** Half the round trip of the best offset sample: how far off the offset may be. */
  private uncertaintyMs = 0;
  /** The listening backend's pid (for operators and tests: pg_terminate_backend). */
  backendPid: number | undefined;

  constructor(
    private readonly cache: SessionCache,
    private readonly options: ListenerOptions,
  ) {
    this.heartbeatMs = options.heartbeatMs ?? 10_000;
    this.maxBackoffMs = options.maxBackoffMs ?? 2_000;
  }

  get listening(): boolean {
    return this.cache.trusted;
  }

  /** The database's clock now, estimated from this process's clock and the measured offset. */
  databaseNow(): number {
    return Date.now() + this.offsetMs;
  }

  get clockUncertaintyMs(): number {
    return this.uncertaintyMs;
  }

  /** Connects once (a failure schedules retries and leaves the cache distrusted). */
  async start(): Promise<void> {
    this.stopped = false;
    await this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retry);
    clearInterval(this.heartbeat);
    this.cache.distrust();
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    const client = new Client({
      connectionString: this.options.url,
      application_name: `sessionary-listener ${process.pid}`,
      keepAlive: true,
      connectionTimeoutMillis: 5_000,
      // A heartbeat that does not answer within this means the connection is gone.
      query_timeout: 5_000,
    });
    this.client = client;
    // Any error or end of this client: from now on a change may be missed.
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client));
    client.on('notification', (message) => {
      if (message.channel === SESSION_CHANNEL) this.cache.applyNotification(message.payload ?? '*');
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${SESSION_CHANNEL}`);
      const [{ pid }] = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows;
      await this.measureClock(client);
      if (this.client !== client) return; // lost (or stopped) meanwhile
      this.backendPid = pid;
      // LISTEN is in force before the flush: whatever changed earlier is gone from the cache,
      // whatever changes later is notified.
      this.cache.trust();
      this.backoffMs = 0;
      if (this.lostLogged) this.logger.log('Listening for session changes again; the session cache is in use');
      this.lostLogged = false;
      clearInterval(this.heartbeat);
      this.heartbeat = setInterval(() => void this.probe(client), this.heartbeatMs).unref();
    } catch (error) {
      this.lost(client, error);
    }
  }

  private async probe(client: Client): Promise<void> {
    try {
      await this.measureClock(client);
    } catch (error) {
      this.lost(client, error);
    }
  }

  /** The best of three samples: the smallest round trip bounds the error of the offset. */
  private async measureClock(client: Client): Promise<void> {
    let best: { offset: number; halfRtt: number } | undefined;
    for (let i = 0; i < 3; i++) {
      const sent = Date.now();
      const { rows } = await client.query<{ ms: string }>(`SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS ms`);
      const received = Date.now();
      const halfRtt = (received - sent) / 2;
      const offset = Number(rows[0].ms) - (sent + halfRtt);
      if (!best || halfRtt < best.halfRtt) best = { offset, halfRtt };
    }
    this.offsetMs = best!.offset;
    this.uncertaintyMs = best!.halfRtt;
  }

  private lost(client: Client, error?: unknown): void {
    if (this.client !== client) return; // an old client's late events
    this.client = undefined;
    this.backendPid = undefined;
    clearInterval(this.heartbeat);
    this.cache.distrust();
    client.removeAllListeners('notification');
    client.on('error', () => undefined); // a closing client may still report errors
    void client.end().catch(() => undefined);
    if (this.stopped) return;
    if (!this.lostLogged) {
      const reason = error instanceof Error ? error.message : 'connection ended';
      this.logger.warn(`Not listening for session changes (${reason}); sessions are checked in the database until it listens again`);
      this.lostLogged = true;
    }
    this.backoffMs = Math.min(this.maxBackoffMs, Math.max(100, this.backoffMs * 2));
    clearTimeout(this.retry);
    this.retry = setTimeout(() => void this.connect(), this.backoffMs).unref();
  }
}
