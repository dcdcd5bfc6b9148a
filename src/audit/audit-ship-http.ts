import { request as httpRequest, type OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { QueryRunner } from 'typeorm';
import { sql } from '../database/sql';
import { shippedPieceName } from './audit-export-format';
import type { ShipDestination, ShippedEnd, ShipPiece } from './audit-ship-destination';

/** A receiver that neither reads nor answers for this long is given up on (the next tick tries again). */
const IDLE_TIMEOUT_MS = 30_000;

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
 * included; an answer before the end of the piece; a connection refused, broken or idle for
 * 30 s) fails the tick, and the next one sends the events again from the same afterSeq.
 *
 * So delivery is at least once: an endpoint that took a piece whose answer was lost gets its
 * events again, in a piece with the same afterSeq (and a throughSeq as large or larger). A
 * receiver keeps, for each afterSeq, the piece with the greatest throughSeq (or dedupes events
 * by `seq`).
 *
 * The progress is per endpoint, keyed by the URL's origin and path (its query is left out: it
 * may hold a token): another URL starts from the first event.
 */
export class HttpShipDestination implements ShipDestination {
  readonly kind = 'http';
  readonly lockKey = '7022357861416547438';
  readonly description: string;
  private readonly url: URL;

  constructor(
    url: string,
    private readonly authorization: string | undefined,
  ) {
    this.url = new URL(url);
    this.description = `${this.url.origin}${this.url.pathname}`;
  }

  /** Its progress only: what the endpoint took cannot be read back (and the progress is restored with the database). */
  async shippedEnd(runner: QueryRunner): Promise<ShippedEnd> {
    const {
      rows: [row],
    } = await sql<{ through_seq: string }>(runner.manager, `SELECT through_seq::text FROM audit_ship_progress WHERE destination = $1`, [
      this.description,
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
    const { status, early } = await post(this.url, lines, headers);
    if (early) throw new Error(`${this.description} answered ${status} to piece ${name} before the whole piece was sent`);
    if (status < 200 || status > 299) throw new Error(`${this.description} answered ${status} to piece ${name}`);
    const { count } = await sql(runner.manager, RECORD_PIECE, [this.description, throughSeq, afterSeq]);
    if (count !== 1) {
      throw new Error(`audit_ship_progress for ${this.description} moved from seq ${afterSeq} while piece ${name} was sent: not recorded`);
    }
    return name;
  }
}

/**
 * POSTs the body, streamed, and resolves with the answer's status once both the body is sent
 * and the answer read, or rejects with the first cause of failure (the body's own, e.g. the
 * export's database, before the socket's). `early`: the answer came before the body's end
 * (which is then destroyed, so that the export gives its connection back).
 */
async function post(url: URL, body: Readable, headers: OutgoingHttpHeaders): Promise<{ status: number; early: boolean }> {
  // A connection of its own (no keep-alive pool): a piece goes at most every few seconds, and a
  // pooled socket the endpoint closed while idle would fail the next piece for nothing.
  const request = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { method: 'POST', headers, agent: false });
  request.setTimeout(IDLE_TIMEOUT_MS, () => request.destroy(new Error(`${url.origin}${url.pathname}: no progress for ${IDLE_TIMEOUT_MS / 1000} s`)));
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
  const [sent, answer] = await Promise.allSettled([pipeline(body, request), answered]);
  if (answer.status === 'fulfilled' && (answer.value.early || sent.status === 'fulfilled')) return answer.value;
  throw sent.status === 'rejected' ? sent.reason : (answer as PromiseRejectedResult).reason;
}
