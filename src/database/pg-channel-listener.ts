import { randomBytes } from 'node:crypto';
import { Logger } from '@nestjs/common';
import { Client, Notification } from 'pg';
import type { DataSource } from 'typeorm';
import { sql } from './sql';

export interface ChannelListenerOptions {
  url: string;
  channel: string;
  /** The connection's application_name, and the logger's context. */
  name: string;
  /** A NOTIFY on the channel. */
  onNotification: (payload: string) => void;
  /**
   * LISTEN is in force and can be trusted (first connection, every reconnection, and the first
   * echo heard after trust was withdrawn for echoes that could not be sent): whatever changed
   * while nothing was trusted must be read again now. Throwing counts as losing the connection.
   * `isCurrent()` turns false once this connection is lost (check it before trusting anything).
   */
  onListening: (client: Client, isCurrent: () => boolean) => Promise<void> | void;
  /**
   * From now on notifications may be missed, until onListening runs again: the connection is
   * gone, or it is still up but has not been shown for echoUnsentLimit beats to hear the server
   * new connections reach (no echo could be sent).
   */
  onLost?: () => void;
  /**
   * Sends `SELECT pg_notify(channel, '')` through the service's own pool. Given, each new
   * connection proves before it is trusted that it hears what the service's writes notify: a
   * NOTIFY reaches only listeners of its own database, and a DATABASE_LISTEN_URL naming another
   * one (or another server) would listen without error and never hear a change.
   */
  notifyThroughPool?: (channel: string) => Promise<unknown>;
  /**
   * Sends `SELECT pg_notify(channel, payload)` from a new connection to where the service's pool
   * connects (DATABASE_URL), closed at once: see notifyFromNewConnection. Given, a new listening
   * connection must hear it before it is trusted, and every heartbeat sends one again: the pool's
   * connections are replaced over time (DATABASE_CONNECTION_LIFETIME, failures) and follow
   * wherever a switchover behind a proxy or DNS name sends new connections, while this long-lived
   * one may stay on the old server, still up, and hear none of the changes made on the new one.
   * An echo sent and not heard within echoTimeoutMs of its sending counts as losing the
   * connection. One that could not be sent (no new connection could be made: a connection limit,
   * the server going down, which the probe notices anyway) is no evidence either way: the
   * connection is kept, but after echoUnsentLimit such beats in a row (connection time counts as
   * one) it is no longer trusted (onLost) until an echo is sent and heard (onListening).
   */
  notifyFromNewConnection?: (channel: string, payload: string) => Promise<unknown>;
  /** How long an echo from a new connection may take to arrive. Default 5 s. */
  echoTimeoutMs?: number;
  /**
   * Beats in a row whose echo could not be sent after which the connection is not trusted
   * (default 3: about 30 s with the default heartbeat). A switchover can leave the pool's new
   * server at its connection limit while this connection stays on the old one: counting such
   * beats as skipped checks without end kept what the listener's consumers held trusted, while
   * the revocations made on the new server went unheard, for as long as the limit lasted (0.24.0).
   */
  echoUnsentLimit?: number;
  /** Probes the connection every heartbeatMs; throwing counts as losing it. Default: SELECT 1. */
  probe?: (client: Client) => Promise<unknown>;
  heartbeatMs?: number;
  maxBackoffMs?: number;
  /**
   * Logged once when the connection is lost ("Not listening ... (reason)"), once when it is no
   * longer trusted for echoes that could not be sent (`doubted`), and once when it is trusted again.
   */
  messages?: { lost: (reason: string) => string; doubted: (reason: string) => string; back: string };
}

/** How long a new listening connection waits for the NOTIFY it had sent through the pool. */
const POOL_NOTIFY_TIMEOUT_MS = 5_000;

/** See ChannelListenerOptions.echoUnsentLimit. */
const ECHO_UNSENT_LIMIT = 3;

/** An echo that could not be sent: not counted as losing the connection (see echoUnsentLimit). */
class EchoNotSentError extends Error {}

/**
 * A dedicated connection LISTENing on one channel, outside the pool (a pooled connection can be
 * handed to someone else, and a transaction-pooling proxy cannot hold a LISTEN). It reconnects
 * with a growing pause when lost, probes itself so a silently dead connection is noticed, and
 * calls `onListening` after each (re)connection, so a change missed meanwhile is read again.
 * Trust also goes (`onLost`) and comes back (`onListening`) on a connection that stays up, when
 * for a few beats no echo could show that it hears the server new connections reach.
 * One warning when the connection is lost or no longer trusted, one line when it is trusted
 * again: no line per retry.
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
  /** A warning is out that the connection is not trusted for echoes that could not be sent. */
  private doubtLogged = false;
  /**
   * Echoes in a row that could not be sent (connection time and beats; across reconnections, as
   * a new listening connection says nothing about where new connections go): see echoUnsentLimit.
   */
  private unsentEchoes = 0;
  /** onListening ran for the current connection and nothing withdrew trust since (onLost). */
  private trusted = false;
  /** Echoes being sent (each a connection of its own): stop() waits for them. */
  private readonly echoesInFlight = new Set<Promise<unknown>>();
  /** The client whose heartbeat is running (a slow beat is not overlapped by the next). */
  private beating: Client | undefined;
  /** The listening backend's pid (for operators and tests: pg_terminate_backend). */
  backendPid: number | undefined;

  constructor(private readonly options: ChannelListenerOptions) {
    this.logger = new Logger(options.name);
    this.messages = options.messages ?? {
      lost: (reason) => `Not listening on ${options.channel} (${reason}); reconnecting`,
      doubted: (reason) => `Not trusting ${options.channel} (${reason}); trusted again once an echo is heard`,
      back: `Listening on ${options.channel} again`,
    };
  }

  /** Connected and trusted: what its consumers hold is kept exact. */
  get listening(): boolean {
    return this.trusted;
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
    this.trusted = false;
    this.options.onLost?.();
    await client?.end().catch(() => undefined);
    // Their connections close when sent (at most their connect and query timeouts): not after the stop.
    await Promise.allSettled([...this.echoesInFlight]);
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
      if (this.options.notifyThroughPool) await this.hearsThePool(client, this.options.notifyThroughPool);
      // A channel of this connection's own for the echoes from new connections, for its life.
      const echoChannel = this.options.notifyFromNewConnection ? probeChannel() : undefined;
      if (echoChannel) {
        await client.query(`LISTEN ${echoChannel}`);
        // An echo that cannot be sent (no new connection: a connection limit) is no evidence
        // against this connection, which the pool's NOTIFY above reached: kept rather than
        // reconnecting every 2 s while the limit lasts, and trusted unless echoes could not be
        // sent for echoUnsentLimit beats in a row (then from the first echo heard, at a beat).
        await this.hearsEcho(client, echoChannel).catch((error: unknown) => {
          if (!(error instanceof EchoNotSentError)) throw error;
          this.echoNotSent(client, error);
        });
      }
      const [{ pid }] = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows;
      if (this.client !== client) return; // lost (or stopped) meanwhile
      // LISTEN is in force before this: whatever changed earlier is read now, later is notified.
      // Not trusted yet past the limit of echoes not sent: the beats go on, and the first echo
      // heard trusts it (the warnings already out say so; no line per reconnection).
      if (this.unsentEchoes < (this.options.echoUnsentLimit ?? ECHO_UNSENT_LIMIT) && !(await this.trust(client))) return;
      this.backendPid = pid;
      this.backoffMs = 0;
      clearInterval(this.heartbeat);
      this.heartbeat = setInterval(() => void this.beat(client, echoChannel), this.options.heartbeatMs ?? 10_000).unref();
    } catch (error) {
      this.lost(client, error);
    }
  }

  /**
   * LISTEN is in force on `client`, and nothing says it is on another server than new
   * connections reach: onListening reads again whatever changed while nothing was trusted, then
   * its consumers trust it. Answers whether `client` is still the current connection.
   */
  private async trust(client: Client): Promise<boolean> {
    await this.options.onListening(client, () => this.client === client);
    if (this.client !== client) return false;
    this.trusted = true;
    if (this.lostLogged || this.doubtLogged) this.logger.log(this.messages.back);
    this.lostLogged = false;
    this.doubtLogged = false;
    return true;
  }

  /**
   * One heartbeat: the probe, then the echo from a new connection; a failure of either is a loss.
   * An echo heard gives back the trust that echoes which could not be sent withdrew.
   */
  private async beat(client: Client, echoChannel: string | undefined): Promise<void> {
    if (this.beating === client) return;
    this.beating = client;
    try {
      await (this.options.probe ?? ((c: Client) => c.query('SELECT 1')))(client);
      if (echoChannel && this.client === client) {
        try {
          await this.hearsEcho(client, echoChannel);
        } catch (error) {
          if (!(error instanceof EchoNotSentError)) throw error;
          this.echoNotSent(client, error);
          return;
        }
        if (!this.trusted && this.client === client) await this.trust(client);
      }
    } catch (error) {
      this.lost(client, error);
    } finally {
      if (this.beating === client) this.beating = undefined;
    }
  }

  /**
   * An echo could not be sent: nothing is known either way about where new connections go. Past
   * echoUnsentLimit in a row the consumers stop trusting what they hold (onLost), with one
   * warning; the connection is kept, and trusted again once an echo is heard.
   */
  private echoNotSent(client: Client, error: EchoNotSentError): void {
    if (this.client !== client) return;
    const limit = this.options.echoUnsentLimit ?? ECHO_UNSENT_LIMIT;
    if (++this.unsentEchoes < limit) return;
    if (this.trusted) {
      this.trusted = false;
      this.options.onLost?.();
    }
    if (this.doubtLogged) return;
    this.logger.warn(
      this.messages.doubted(
        `could not check for ${this.unsentEchoes} heartbeats in a row that it hears the server new connections to the service's database reach: ${error.message}`,
      ),
    );
    this.doubtLogged = true;
  }

  /**
   * A NOTIFY sent from a new connection to the service's database (notifyFromNewConnection)
   * arrives here within echoTimeoutMs, or this throws: EchoNotSentError when it could not be
   * sent, else an error that counts as losing the connection.
   */
  private async hearsEcho(client: Client, channel: string): Promise<void> {
    const send = this.options.notifyFromNewConnection!;
    const payload = randomBytes(8).toString('hex');
    const timeoutMs = this.options.echoTimeoutMs ?? POOL_NOTIFY_TIMEOUT_MS;
    await this.hears(
      client,
      channel,
      payload,
      () => {
        const sending = send(channel, payload);
        this.echoesInFlight.add(sending);
        return sending
          .finally(() => this.echoesInFlight.delete(sending))
          .catch((error: unknown) => {
            throw new EchoNotSentError(`no NOTIFY could be sent from a new connection: ${error instanceof Error ? error.message : String(error)}`);
          });
      },
      `a NOTIFY sent from a new connection to the service's database did not arrive within ${timeoutMs / 1000} s: ` +
        'the listening connection is on another server than the one new connections reach (a switchover?)',
      timeoutMs,
    );
    this.unsentEchoes = 0;
  }

  /**
   * A NOTIFY sent through the pool on a channel of this connection's own arrives here, or this
   * throws (counted as losing the connection: logged once, tried again, never trusted meanwhile).
   */
  private async hearsThePool(client: Client, notify: (channel: string) => Promise<unknown>): Promise<void> {
    const channel = probeChannel();
    await client.query(`LISTEN ${channel}`);
    await this.hears(
      client,
      channel,
      '',
      () => notify(channel),
      `a NOTIFY sent through the service's pool did not arrive within ${POOL_NOTIFY_TIMEOUT_MS / 1000} s: ` +
        'the listening connection (DATABASE_LISTEN_URL) must reach the database the service writes to (DATABASE_URL)',
      POOL_NOTIFY_TIMEOUT_MS,
    );
    await client.query(`UNLISTEN ${channel}`);
  }

  /** `send()` makes a NOTIFY of `payload` on `channel`, which this client listens to: it arrives, or this throws. */
  private async hears(
    client: Client,
    channel: string,
    payload: string,
    send: () => Promise<unknown>,
    timeoutMessage: string,
    timeoutMs: number,
  ): Promise<void> {
    let heard!: () => void;
    let gone!: (error: Error) => void;
    const arrived = new Promise<void>((resolve, reject) => ([heard, gone] = [resolve, reject]));
    // Handled here too: it may reject while the NOTIFY is still being sent (before the await below).
    arrived.catch(() => undefined);
    const onNotification = (message: Notification) => {
      if (message.channel === channel && (message.payload ?? '') === payload) heard();
    };
    // The connection lost or stopped meanwhile: no reason to wait the timeout out.
    const onEnd = () => gone(new Error('connection ended'));
    client.on('notification', onNotification);
    client.once('end', onEnd);
    client.once('error', onEnd);
    let timer: NodeJS.Timeout | undefined;
    try {
      await send();
      // Timed from the send's end: what is timed is the delivery. A send slow to connect (a
      // loaded server, TLS, a pooler's queue) is bounded by its own timeouts, and counted in
      // this one it made a listener on the right server look lost exactly under load.
      timer = setTimeout(() => gone(new Error(timeoutMessage)), timeoutMs).unref();
      await arrived;
    } finally {
      clearTimeout(timer);
      client.removeListener('notification', onNotification);
      client.removeListener('end', onEnd);
      client.removeListener('error', onEnd);
    }
  }

  private lost(client: Client, error?: unknown): void {
    if (this.client !== client) return; // an old client's late events
    this.client = undefined;
    this.backendPid = undefined;
    this.trusted = false;
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

function probeChannel(): string {
  return `sessionary_probe_${randomBytes(8).toString('hex')}`;
}

/** An empty NOTIFY on `channel` through the data source's pool (notifyThroughPool's usual body). */
export function notifyThrough(dataSource: DataSource, channel: string): Promise<unknown> {
  return sql(dataSource.manager, `SELECT pg_notify($1, '')`, [channel]);
}

/**
 * A NOTIFY of `payload` on `channel` from a new connection to `url`, closed at once
 * (notifyFromNewConnection's usual body, with the URL the service's pool connects to).
 */
export async function notifyFromNewConnection(url: string, name: string, channel: string, payload: string): Promise<void> {
  const client = new Client({
    connectionString: url,
    application_name: `${name} echo ${process.pid}`,
    connectionTimeoutMillis: 5_000,
    query_timeout: 5_000,
  });
  client.on('error', () => undefined); // ended below either way
  try {
    await client.connect();
    await client.query(`SELECT pg_notify($1, $2)`, [channel, payload]);
  } finally {
    await client.end().catch(() => undefined);
  }
}
