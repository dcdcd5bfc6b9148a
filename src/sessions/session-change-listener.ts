import type { Client } from 'pg';
import { PgChannelListener } from '../database/pg-channel-listener';
import type { SessionCache } from './session-cache';

export const SESSION_CHANNEL = 'sessionary_sessions';

export interface ListenerOptions {
  url: string;
  /** How often the connection is probed (and the clock offset measured again). */
  heartbeatMs?: number;
  /** Longest pause between reconnection attempts. */
  maxBackoffMs?: number;
  /** See ChannelListenerOptions.notifyThroughPool: each connection proves it hears the service's database. */
  notifyThroughPool?: (channel: string) => Promise<unknown>;
  /** See ChannelListenerOptions.notifyFromNewConnection: each heartbeat proves it hears the server new connections reach. */
  notifyFromNewConnection?: (channel: string, payload: string) => Promise<unknown>;
}

/**
 * The one listening connection of an instance's session cache (a PgChannelListener on
 * `sessionary_sessions`). While it listens, the cache is trusted; the moment it fails, or
 * echoes from new connections could not be sent for a few heartbeats (the listener cannot tell
 * whether it still hears the server the pool writes to), the cache is flushed and distrusted
 * (the session check reads the database) until a connection listens and is shown to hear that
 * server again, which flushes once more before the cache is trusted.
 *
 * It also measures the offset of the database's clock, so deadlines (set with the database's
 * now()) are compared on the same clock without a query.
 */
/**
 * This process's clock for the offset: monotonic since the process started, so that the wall
 * clock stepped back or forward (NTP, an operator) cannot move the database's estimated time
 * until the next measurement; with Date.now() a step back had cached sessions honoured past their
 * deadlines, and a step forward recorded activity in the future (until 0.20.2).
 */
function processClockMs(): number {
  return performance.timeOrigin + performance.now();
}

export class SessionChangeListener {
  private readonly connection: PgChannelListener;
  /** Database clock minus this process's clock, in ms. */
  private offsetMs = 0;
  /** Half the round trip of the best offset sample: how far off the offset may be. */
  private uncertaintyMs = 0;

  constructor(
    private readonly cache: SessionCache,
    options: ListenerOptions,
  ) {
    this.connection = new PgChannelListener({
      url: options.url,
      channel: SESSION_CHANNEL,
      name: 'sessionary-listener',
      heartbeatMs: options.heartbeatMs,
      maxBackoffMs: options.maxBackoffMs,
      notifyThroughPool: options.notifyThroughPool,
      notifyFromNewConnection: options.notifyFromNewConnection,
      onNotification: (payload) => this.cache.applyNotification(payload || '*'),
      onListening: async (client, isCurrent) => {
        await this.measureClock(client);
        // LISTEN is in force before the flush: whatever changed earlier is gone from the cache,
        // whatever changes later is notified. Never trusted by a connection lost meanwhile.
        if (isCurrent()) this.cache.trust();
      },
      onLost: () => this.cache.distrust(),
      probe: (client) => this.measureClock(client),
      messages: {
        lost: (reason) => `Not listening for session changes (${reason}); sessions are checked in the database until it listens again`,
        doubted: (reason) => `Not trusting the session cache (${reason}); sessions are checked in the database until an echo is heard`,
        back: 'Listening for session changes again; the session cache is in use',
      },
    });
  }

  get listening(): boolean {
    return this.cache.trusted;
  }

  /** The listening backend's pid (for operators and tests: pg_terminate_backend). */
  get backendPid(): number | undefined {
    return this.connection.backendPid;
  }

  /** The database's clock now, estimated from this process's clock and the measured offset. */
  databaseNow(): number {
    return processClockMs() + this.offsetMs;
  }

  get clockUncertaintyMs(): number {
    return this.uncertaintyMs;
  }

  /** Connects once (a failure schedules retries and leaves the cache distrusted). */
  start(): Promise<void> {
    return this.connection.start();
  }

  stop(): Promise<void> {
    return this.connection.stop();
  }

  /** The best of three samples: the smallest round trip bounds the error of the offset. */
  private async measureClock(client: Client): Promise<void> {
    let best: { offset: number; halfRtt: number } | undefined;
    for (let i = 0; i < 3; i++) {
      const sent = processClockMs();
      const { rows } = await client.query<{ ms: string }>(`SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS ms`);
      const received = processClockMs();
      const halfRtt = (received - sent) / 2;
      const offset = Number(rows[0].ms) - (sent + halfRtt);
      if (!best || halfRtt < best.halfRtt) best = { offset, halfRtt };
    }
    this.offsetMs = best!.offset;
    this.uncertaintyMs = best!.halfRtt;
  }
}
