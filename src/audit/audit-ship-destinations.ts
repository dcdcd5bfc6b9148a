import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import type { QueryRunner } from 'typeorm';
import type { AppConfig } from '../config/config';
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
    for (const destination of this.list) {
      const shipped = await destination.shippedThrough(runner);
      if (BigInt(shipped) < BigInt(throughSeq)) {
        return `its events run through seq ${throughSeq}, and ${destination.kind} ${destination.description} has them through seq ${shipped} only; it is dropped once they are shipped`;
      }
    }
    return undefined;
  }
}
