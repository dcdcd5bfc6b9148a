import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import type { QueryRunner } from 'typeorm';
import type { AppConfig } from '../config/config';
import { sql } from '../database/sql';
import type { ShipDestination } from './audit-ship-destination';
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
    const newest = this.list.length ? await newestAuditSeq(runner) : '0';
    for (const destination of this.list) {
      const shipped = await destination.shippedThrough(runner);
      // Progress past this log's newest seq is not this log's (the shipping task refuses to ship
      // on after it): none of the month can be taken for shipped (until 0.20.2 every month was).
      const foreign = foreignProgress(destination, shipped, newest);
      if (foreign) return `${foreign}; nothing is dropped until that is resolved`;
      if (BigInt(shipped) < BigInt(throughSeq)) {
        return `its events run through seq ${throughSeq}, and ${destination.kind} ${destination.description} has them through seq ${shipped} only; it is dropped once they are shipped`;
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
 * Why the destination's progress (the seq its newest piece runs through) cannot be this audit
 * log's: past the newest seq the log ever handed out (another log's pieces, or the database
 * restored from an older backup). Undefined when it may be.
 */
export function foreignProgress(destination: ShipDestination, shipped: string, newest: string): string | undefined {
  if (BigInt(shipped) <= BigInt(newest)) return undefined;
  return (
    `the newest piece shipped to ${destination.description} runs through seq ${shipped}, past this audit log's newest seq (${newest}): ` +
    (destination.kind === 'directory'
      ? "the directory holds another log's pieces, or the database was restored from an older backup; move them away"
      : 'audit_ship_progress is from another log, or the database was restored from an older backup')
  );
}
