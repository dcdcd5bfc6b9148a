import { Logger } from '@nestjs/common';
import { Client } from 'pg';

export interface ChannelListenerOptions {
  url: string;
  channel: string;
  /** For the log lines and the connection's application_name. */
  name: string;
  /** A NOTIFY on the channel. */
  onNotification: (payload: string) => void;
  /**
   * LISTEN is in force (first connection and every reconnection): whatever changed while no
   * connection listened must be read again now.
   */
  onListening: () => Promise<void> | void;
  heartbeatMs?: number;
  maxBackoffMs?: number;
}

/**
 * A dedicated connection LISTENing on one channel, outside the pool (a pooled connection can be
 * handed to someone else, and a transaction-pooling proxy cannot hold a LISTEN). It reconnects
 * with a growing pause when lost, probes itself so a silently dead connection is noticed, and
 * calls `onListening` after each (re)connection, so a change missed meanwhile is read again.
 */
export class PgChannelListener {
  private readonly logger: Logger;
  private client: Client | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private backoffMs = 0;
  private stopped = false;
  private lostLogged = false;
  backendPid: number | undefined;

  constructor(private readonly options: ChannelListenerOptions) {
    this.logger = new Logger(options.name);
  }

  get listening(): boolean {
    return this.backendPid !== undefined;
  }

  async start(): Promise<void> {
    this.stopped = false;
    await this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retry);
    clearInterval(this.heartbeat);
    const client = this.client;
    this.client = undefined;
    this.backendPid = undefined;
    await client?.end().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    const client = new Client({
      connectionString: this.options.url,
      application_name: `${this.options.name} ${process.pid}`,
      keepAlive: true,
      connectionTimeoutMillis: 5_000,
      query_timeout: 5_000,
    });
    this.client = client;
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client));
    client.on('notification', (message) => {
      if (message.channel === this.options.channel) this.options.onNotification(message.payload ?? '');
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${this.options.channel}`);
      const [{ pid }] = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows;
      if (this.client !== client) return;
      await this.options.onListening();
      if (this.client !== client) return;
      this.backendPid = pid;
      this.backoffMs = 0;
      if (this.lostLogged) this.logger.log(`Listening on ${this.options.channel} again`);
      this.lostLogged = false;
      clearInterval(this.heartbeat);
      this.heartbeat = setInterval(
        () => void client.query('SELECT 1').catch((error) => this.lost(client, error)),
        this.options.heartbeatMs ?? 10_000,
      ).unref();
    } catch (error) {
      this.lost(client, error);
    }
  }

  private lost(client: Client, error?: unknown): void {
    if (this.client !== client) return;
    this.client = undefined;
    this.backendPid = undefined;
    clearInterval(this.heartbeat);
    client.removeAllListeners('notification');
    client.on('error', () => undefined);
    void client.end().catch(() => undefined);
    if (this.stopped) return;
    if (!this.lostLogged) {
      const reason = error instanceof Error ? error.message : 'connection ended';
      this.logger.warn(`Not listening on ${this.options.channel} (${reason}); reconnecting`);
      this.lostLogged = true;
    }
    this.backoffMs = Math.min(this.options.maxBackoffMs ?? 2_000, Math.max(100, this.backoffMs * 2));
    clearTimeout(this.retry);
    this.retry = setTimeout(() => void this.connect(), this.backoffMs).unref();
  }
}
