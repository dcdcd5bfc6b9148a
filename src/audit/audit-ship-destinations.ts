import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import type { QueryRunner } from 'typeorm';
import type { AppConfig } from '../config/config';
import { isDatabaseUnavailable, pgErrorCode } from '../database/pg-errors';
import { sql } from '../database/sql';
import type { ShipDestination, ShippedEnd, ShippedEvent } from './audit-ship-destination';
import { DirectoryShipDestination } from './audit-ship-directory';
import { HttpShipDestination } from './audit-ship-http';

/**
 * The destinations this instance ships the audit log to (AUDIT_SHIP_DIR, AUDIT_SHIP_URL): the
 * shipping task sends them pieces, and retention keeps a month until they have all of it.
 */
@Injectable()
export class AuditShipDestinations {
  readonly list: readonly ShipDestination[];

  constructor(config: ConfigService<AppConfig, true>) {
    const dir = config.get('AUDIT_SHIP_DIR', { infer: true });
    const url = config.get('AUDIT_SHIP_URL', { infer: true });
    this.list = [
      ...(dir ? [new DirectoryShipDestination(dir)] : []),
      ...(url ? [new HttpShipDestination(url, config.get('AUDIT_SHIP_AUTHORIZATION', { infer: true }))] : []),
    ];
  }

  /**
   * Why events up to `throughSeq` cannot be dropped yet: a destination has not had them all
   * (retention would otherwise delete events no other system ever got). Undefined when every
   * destination has, or none is configured.
   */
  async notShippedThrough(runner: QueryRunner, throughSeq: string): Promise<string | undefined> {
    for (const destination of this.list) {
      let end: ShippedEnd;
      let foreign: string | undefined;
      try {
        end = await destination.shippedEnd(runner);
        // After the destination's end (a piece shipped meanwhile is within the newest seq read after it).
        foreign = await notThisLogsCopy(runner, destination, end, await newestAuditSeq(runner));
      } catch (error) {
        // The database's own failures end the run as any other would; a directory that cannot
        // be read, or a piece that is not one, holds every month: nothing can be taken for shipped.
        if (pgErrorCode(error) !== undefined || isDatabaseUnavailable(error)) throw error;
        return `${destination.kind} ${destination.description} cannot be read (${error instanceof Error ? error.message : String(error)}); nothing is dropped until that is resolved`;
      }
      // A copy that is not this log's (the shipping task refuses to ship on after it): none of
      // the month can be taken for shipped.
      if (foreign) return `${foreign}; nothing is dropped until that is resolved`;
      if (BigInt(end.throughSeq) < BigInt(throughSeq)) {
        return `its events run through seq ${throughSeq}, and ${destination.kind} ${destination.description} has them through seq ${end.throughSeq} only; it is dropped once they are shipped`;
      }
    }
    return undefined;
  }
}

/** The newest seq this audit log ever handed out ('0' before the first). */
export async function newestAuditSeq(runner: QueryRunner): Promise<string> {
  const {
    rows: [{ newest }],
  } = await sql<{ newest: string | null }>(
    runner.manager,
    `SELECT pg_sequence_last_value(pg_get_serial_sequence('audit_events', 'seq'))::text AS newest`,
  );
  return newest ?? '0';
}

/**
 * Why the destination's copy cannot be of this audit log (another log's pieces, or the
 * database restored from an older backup), so that shipping on after it would skip events;
 * undefined when it may be. Its progress must not run past the newest seq this log handed out
 * (`newest`, newestAuditSeq). Where the destination can tell its last event (a directory), that
 * event must be this log's (the same seq and hash at its chain's position, or gone with its
 * month while its chain's head reached it), and no event of this log may lie after it up to the
 * progress: after a restore, once the sequence passes the progress, only this tells the events
 * written since the restore (which reuse the seqs shipped after the backup) from shipped ones.
 */
export async function notThisLogsCopy(
  runner: QueryRunner,
  destination: ShipDestination,
  end: ShippedEnd,
  newest: string,
): Promise<string | undefined> {
  const because = (what: string) =>
    `${what}: ` +
    (destination.kind === 'directory'
      ? "the directory holds another log's pieces, or the database was restored from an older backup; move them away"
      : 'audit_ship_progress is from another log, or the database was restored from an older backup');
  if (BigInt(end.throughSeq) > BigInt(newest)) {
    return because(
      `the newest piece shipped to ${destination.description} runs through seq ${end.throughSeq}, past this audit log's newest seq (${newest})`,
    );
  }
  if (!end.readTail) return undefined;
  const { lastEvent, noEventsAfter } = await end.readTail();
  const found = await shippedEventInLog(runner, lastEvent, noEventsAfter, end.throughSeq);
  if (found.unshipped !== null) {
    return because(
      `this audit log holds event seq ${found.unshipped}, which the pieces shipped to ${destination.description} leave out ` +
        `(they hold no event after seq ${noEventsAfter} through ${end.throughSeq})`,
    );
  }
  if (!lastEvent) return undefined;
  const named = `the last event shipped to ${destination.description} (seq ${lastEvent.seq}${lastEvent.chainKey === null ? '' : `, chain ${lastEvent.chainKey} position ${lastEvent.position}`})`;
  if (found.stored !== null) {
    // An event shipped before it was sealed into its chain (one written before the chain) has no hash in the piece.
    const same = lastEvent.hash === null ? found.stored.startsWith(`${lastEvent.seq} `) : found.stored === `${lastEvent.seq} ${lastEvent.hash}`;
    return same ? undefined : because(`${named} is another event in this audit log`);
  }
  // Not stored: gone with its month (retention) if its chain's head reached it; not yet written otherwise.
  if (lastEvent.chainKey !== null && (found.head === null || BigInt(found.head) < BigInt(lastEvent.position!))) {
    return because(`${named} is past the end of that chain in this audit log (${found.head === null ? 'no such chain' : `position ${found.head}`})`);
  }
  return undefined;
}

/**
 * What the log holds of a shipped copy's end, in one round trip: its first event in
 * (`noEventsAfter`, `throughSeq`] (which the copy does not hold), the seq and hash of the event
 * at `lastEvent`'s place (its chain's position; its seq outside every chain), and that chain's
 * head position. The lookup tries the event's month first (its time, which PostgreSQL prunes
 * to), then every month (a wrong time costs a lookup, never the check).
 */
async function shippedEventInLog(
  runner: QueryRunner,
  lastEvent: ShippedEvent | null,
  noEventsAfter: string,
  throughSeq: string,
): Promise<{ unshipped: string | null; stored: string | null; head: string | null }> {
  const params: unknown[] = [];
  const param = (value: unknown, type: string) => `$${params.push(value)}::${type}`;
  const unshipped = `(SELECT min(seq)::text FROM audit_events WHERE seq > ${param(noEventsAfter, 'bigint')} AND seq <= ${param(throughSeq, 'bigint')})`;
  let stored = 'NULL::text';
  let head = 'NULL::text';
  if (lastEvent) {
    const chainKey = lastEvent.chainKey === null ? null : param(lastEvent.chainKey, 'text');
    const place =
      chainKey === null
        ? `seq = ${param(lastEvent.seq, 'bigint')}`
        : `chain_key = ${chainKey} AND chain_pos = ${param(lastEvent.position, 'bigint')}`;
    const lookup = (where: string) => `(SELECT seq::text || ' ' || coalesce(hash, '-') FROM audit_events WHERE ${where} LIMIT 1)`;
    stored = `coalesce(${lookup(`${place} AND created_at = ${param(lastEvent.createdAt, 'timestamptz')}`)}, ${lookup(place)})`;
    if (chainKey !== null) head = `(SELECT position::text FROM audit_chain_heads WHERE chain_key = ${chainKey})`;
  }
  const {
    rows: [row],
  } = await sql<{ unshipped: string | null; stored: string | null; head: string | null }>(
    runner.manager,
    `SELECT ${unshipped} AS unshipped, ${stored} AS stored, ${head} AS head`,
    params,
  );
  return row;
}
