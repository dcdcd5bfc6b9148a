import { Logger } from '@nestjs/common';
import { Client } from 'pg';

export interface ChannelListenerOptions {
  url: string;
  channel: string;
  /** The connection's application_name, and the logger's context. */
  name: string;
  /** A NOTIFY on the channel. */
  onNotification: (payload: string) => void;
  /**
   * LISTEN is in force (first connection and every reconnection): whatever changed while no
   * connection listened must be read again now. Throwing counts as losing the connection.
   * `isCurrent()` turns false once this connection is lost (check it before trusting anything).
   */
  onListening: (client: Client, isCurrent: () => boolean) => Promise<void> | void;
  /** The connection is gone (and until onListening runs again, notifications may be missed). */
  onLost?: () => void;
  /** Probes the connection every heartbeatMs; throwing counts as losing it. Default: SELECT 1. */
  probe?: (client: Client) => Promise<unknown>;
  heartbeatMs?: number;
  maxBackoffMs?: number;
  /** Logged once when the connection is lost ("Not listening ... (reason)"), and when it is back. */
  messages?: { lost: (reason: string) => string; back: string };
}

/**
 * A dedicated connection LISTENing on one channel, outside the pool (a pooled connection can be
 * handed to someone else, and a transaction-pooling proxy cannot hold a LISTEN). It reconnects
 * with a growing pause when lost, probes itself so a silently dead connection is noticed, and
 * calls `onListening` after each (re)connection, so a change missed meanwhile is read again.
 * One warning when the connection is lost, one line when it is back: no line per retry.
 */
export class PgChannelListener {
  private readonly logger: Logger;
  private readonly messages: NonNullable<ChannelListenerOptions['messages']>;
  private client: Client | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private backoffMs = 0;
  private stopped = false;
  private lostLogged = false;
  /** The listening backend's pid (for operators and tests: pg_terminate_backend). */
  backendPid: number | undefined;

  constructor(private readonly options: ChannelListenerOptions) {
    this.logger = new Logger(options.name);
    this.messages = options.messages ?? {
      lost: (reason) => `Not listening on ${options.channel} (${reason}); reconnecting`,
      back: `Listening on ${options.channel} again`,
    };
  }

  get listening(): boolean {
    return this.backendPid !== undefined;
  }

  /** Connects once (a failure schedules retries). */
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
    this.options.onLost?.();
    await client?.end().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    const client = new Client({
      connectionString: this.options.url,
      application_name: `${this.options.name} ${process.pid}`,
      keepAlive: true,
      connectionTimeoutMillis: 5_000,
      // A probe that does not answer within this means the connection is gone.
      query_timeout: 5_000,
    });
    this.client = client;
    // Any error or end of this client: from now on a change may be missed.
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client));
    client.on('notification', (message) => {
      if (message.channel === this.options.channel) this.options.onNotification(message.payload ?? '');
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${this.options.channel}`);
      const [{ pid }] = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows;
      if (this.client !== client) return; // lost (or stopped) meanwhile
      // LISTEN is in force before this: whatever changed earlier is read now, later is notified.
      await this.options.onListening(client, () => this.client === client);
      if (this.client !== client) return;
      this.backendPid = pid;
      this.backoffMs = 0;
      if (this.lostLogged) this.logger.log(this.messages.back);
      this.lostLogged = false;
      clearInterval(this.heartbeat);
      const probe = this.options.probe ?? ((c: Client) => c.query('SELECT 1'));
      this.heartbeat = setInterval(
        () => void probe(client).catch((error: unknown) => this.lost(client, error)),
        this.options.heartbeatMs ?? 10_000,
      ).unref();
    } catch (error) {
      this.lost(client, error);
    }
  }

  private lost(client: Client, error?: unknown): void {
    if (this.client !== client) return; // an old client's late events
    this.client = undefined;
    this.backendPid = undefined;
    clearInterval(this.heartbeat);
    this.options.onLost?.();
    client.removeAllListeners('notification');
    client.on('error', () => undefined); // a closing client may still report errors
    void client.end().catch(() => undefined);
    if (this.stopped) return;
    if (!this.lostLogged) {
      this.logger.warn(this.messages.lost(error instanceof Error ? error.message : 'connection ended'));
      this.lostLogged = true;
    }
    this.backoffMs = Math.min(this.options.maxBackoffMs ?? 2_000, Math.max(100, this.backoffMs * 2));
    clearTimeout(this.retry);
    this.retry = setTimeout(() => void this.connect(), this.backoffMs).unref();
  }
}
