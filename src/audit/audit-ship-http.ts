import { type ClientRequest, request as httpRequest, type OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { QueryRunner } from 'typeorm';
import { sql } from '../database/sql';
import { shippedPieceName } from './audit-export-format';
import type { ShipDestination, ShippedEnd, ShipPiece } from './audit-ship-destination';

/**
 * A receiver that neither reads nor answers for this long is given up on (the next tick tries
 * again); from the connection's start, so a host that never answers the connection (a firewall
 * dropping it) is given up on as soon, not after the system's connect timeout (about 2 min).
 */
const IDLE_TIMEOUT_MS = 30_000;
/**
 * The slowest a piece may go on average: a piece is given up on once it has taken longer than
 * IDLE_TIMEOUT_MS (the connection, TLS, the export's first rows, the receiver's answer) plus
 * the time the bytes sent so far take at this rate. Not a fixed deadline: a piece is at most
 * AUDIT_SHIP_MAX_EVENTS events (5,000 by default, 2–3 MB, given 100–120 s; but up to
 * 10,000,000, gigabytes), and any fixed one would either cut a large piece off every tick, for
 * good, or let a receiver that takes a byte every 29 s hold the piece, its export's pooled
 * connection and snapshot, and the shipping lock, for days. 256 kbit/s is slower than any
 * link a log receiver should sit behind.
 */
const MIN_BYTES_PER_SECOND = 32 * 1024;

/** Moves the endpoint's progress from the piece's afterSeq to its throughSeq, and only from there. */
const RECORD_PIECE = `
  INSERT INTO audit_ship_progress (destination, through_seq, shipped_at) VALUES ($1, $2::bigint, now())
  ON CONFLICT (destination) DO UPDATE SET through_seq = EXCLUDED.through_seq, shipped_at = EXCLUDED.shipped_at
   WHERE audit_ship_progress.through_seq = $3::bigint`;

/**
 * AUDIT_SHIP_URL: each piece POSTed as `application/x-ndjson` (streamed, chunked), named by the
 * `Sessionary-Audit-Piece` and `Idempotency-Key` headers (`audit-after-<seq>-through-<seq>.ndjson`,
 * as a shipped file would be), with AUDIT_SHIP_AUTHORIZATION as its Authorization header. A piece
 * counts as delivered when the endpoint answered 2xx after the whole piece was sent; then
 * audit_ship_progress moves to its throughSeq. Anything else (another status, redirects
 * included; an answer before the end of the piece; a connection refused, broken, idle for
 * 30 s (not answered in 30 s included), or slower on the whole than MIN_BYTES_PER_SECOND)
 * fails the tick, and the next one sends the events again from the same afterSeq.
 *
 * So delivery is at least once: an endpoint that took a piece whose answer was lost gets its
 * events again, in a piece with the same afterSeq (and a throughSeq as large or larger). A
 * receiver keeps, for each afterSeq, the piece with the greatest throughSeq (or dedupes events
 * by `seq`).
 *
 * The progress is per endpoint, keyed by the URL's origin and path (its query is left out: it
 * may hold a token): another URL starts from the first event. Log lines and errors name the
 * origin only: collectors take tokens in the path too (Slack's and Loggly's webhooks do).
 */
export class HttpShipDestination implements ShipDestination {
  readonly kind = 'http';
  readonly lockKey = '7022357861416547438';
  readonly description: string;
  /** audit_ship_progress's key for this endpoint: its origin and path (a secret's place, like the query, but kept as 0.18.0 keyed it). */
  private readonly progressKey: string;
  /** See IDLE_TIMEOUT_MS and MIN_BYTES_PER_SECOND (fields so that tests can shorten them). */
  idleTimeoutMs = IDLE_TIMEOUT_MS;
  minBytesPerSecond = MIN_BYTES_PER_SECOND;
  private readonly url: URL;

  constructor(
    url: string,
    private readonly authorization: string | undefined,
  ) {
    this.url = new URL(url);
    this.progressKey = `${this.url.origin}${this.url.pathname}`;
    this.description = loggableEndpoint(this.url);
  }

  /** Its progress only: what the endpoint took cannot be read back (and the progress is restored with the database). */
  async shippedEnd(runner: QueryRunner): Promise<ShippedEnd> {
    const {
      rows: [row],
    } = await sql<{ through_seq: string }>(runner.manager, `SELECT through_seq::text FROM audit_ship_progress WHERE destination = $1`, [
      this.progressKey,
    ]);
    return { throughSeq: row?.through_seq ?? '0' };
  }

  async deliver({ afterSeq, throughSeq, lines }: ShipPiece, runner: QueryRunner): Promise<string> {
    const name = shippedPieceName(afterSeq, throughSeq);
    const headers: OutgoingHttpHeaders = {
      'content-type': 'application/x-ndjson',
      'sessionary-audit-piece': name,
      'idempotency-key': name,
      'user-agent': 'sessionary',
    };
    if (this.authorization !== undefined) headers.authorization = this.authorization;
    const { status, early } = await post(this.url, lines, headers, {
      idleTimeoutMs: this.idleTimeoutMs,
      minBytesPerSecond: this.minBytesPerSecond,
      where: this.description,
    });
    if (early) throw new Error(`${this.description} answered ${status} to piece ${name} before the whole piece was sent`);
    if (status < 200 || status > 299) throw new Error(`${this.description} answered ${status} to piece ${name}`);
    const { count } = await sql(runner.manager, RECORD_PIECE, [this.progressKey, throughSeq, afterSeq]);
    if (count !== 1) {
      throw new Error(`audit_ship_progress for ${this.description} moved from seq ${afterSeq} while piece ${name} was sent: not recorded`);
    }
    return name;
  }
}

/** The endpoint as log lines and errors name it: its origin, and `/…` for any path beyond `/`. */
export function loggableEndpoint(url: URL): string {
  return url.pathname === '/' ? url.origin : `${url.origin}/…`;
}

interface PostLimits {
  idleTimeoutMs: number;
  minBytesPerSecond: number;
  /** The endpoint as errors name it (loggableEndpoint). */
  where: string;
}

/**
 * POSTs the body, streamed, and resolves with the answer's status once both the body is sent
 * and the answer read, or rejects with the first cause of failure (the body's own, e.g. the
 * export's database, before the socket's). `early`: the answer came before the body's end
 * (which is then destroyed, so that the export gives its connection back).
 */
async function post(url: URL, body: Readable, headers: OutgoingHttpHeaders, limits: PostLimits): Promise<{ status: number; early: boolean }> {
  const { where } = limits;
  // A connection of its own (no keep-alive pool): a piece goes at most every few seconds, and a
  // pooled socket the endpoint closed while idle would fail the next piece for nothing.
  // `timeout` in the options, not request.setTimeout(): that one arms the socket's timer only
  // once it has connected, so a connection never answered waited for the system's timeout.
  const request = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, {
    method: 'POST',
    headers,
    agent: false,
    timeout: limits.idleTimeoutMs,
  });
  request.on('timeout', () => request.destroy(new Error(`${where}: no progress for ${limits.idleTimeoutMs / 1000} s`)));
  const counted = byteCounter();
  const stopDeadline = pieceDeadline(request, () => counted.bytes, limits);
  const answered = new Promise<{ status: number; early: boolean }>((resolve, reject) => {
    request.once('error', reject);
    request.once('response', (response) => {
      const early = !body.readableEnded;
      if (early) body.destroy();
      response.once('error', reject);
      response.once('end', () => resolve({ status: response.statusCode ?? 0, early }));
      response.resume(); // only the status matters
    });
  });
  const [sent, answer] = await Promise.allSettled([pipeline(body, counted.stream, request), answered]).finally(stopDeadline);
  if (answer.status === 'fulfilled' && (answer.value.early || sent.status === 'fulfilled')) return answer.value;
  throw sent.status === 'rejected' ? sent.reason : (answer as PromiseRejectedResult).reason;
}

/** A pass-through that counts the bytes through it (the body's, as the request took them). */
function byteCounter(): { stream: Transform; readonly bytes: number } {
  let bytes = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      bytes += chunk.length;
      done(null, chunk);
    },
  });
  return {
    stream,
    get bytes() {
      return bytes;
    },
  };
}

/**
 * Destroys the request once the piece has taken longer than it may (MIN_BYTES_PER_SECOND):
 * IDLE_TIMEOUT_MS plus the time its bytes sent so far take at that rate, the allowance growing
 * as they go. The idle timeout alone lets a receiver that takes a byte (or answers one) every
 * 29 s hold a piece forever. Returns what stops it.
 */
function pieceDeadline(request: ClientRequest, bytesSent: () => number, limits: PostLimits): () => void {
  const { where } = limits;
  const started = performance.now();
  const allowedMs = () => limits.idleTimeoutMs + (bytesSent() * 1000) / limits.minBytesPerSecond;
  let timer: NodeJS.Timeout;
  const check = () => {
    const left = started + allowedMs() - performance.now();
    if (left > 0) timer = setTimeout(check, left);
    else {
      const seconds = Math.round((performance.now() - started) / 1000);
      request.destroy(
        new Error(`${where}: the piece went slower than ${limits.minBytesPerSecond} bytes a second (${bytesSent()} bytes sent in ${seconds} s)`),
      );
    }
  };
  timer = setTimeout(check, allowedMs());
  return () => clearTimeout(timer);
}
