import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileDurably } from '../common/durable-file';
import { SHIPPED_PIECE_NAME, shippedPieceName } from './audit-export-format';
import type { ShipDestination, ShipPiece } from './audit-ship-destination';

/**
 * AUDIT_SHIP_DIR: each piece a file of its own, written under a temporary name and renamed
 * whole, so a reader (a log shipper, a sync to other storage) never sees a part of one.
 *
 * The directory is its only state: the next piece starts where its newest one ends, so nothing
 * in the database (which an attacker there could change) decides what is shipped, and a
 * directory emptied by its reader starts again from the first event (mind that: move pieces
 * away, keeping the newest, or let the reader keep what it took).
 */
export class DirectoryShipDestination implements ShipDestination {
  readonly kind = 'directory';
  /** Instances that share the directory never write the same piece twice. */
  readonly lockKey = '7022357861416547437';

  constructor(private readonly dir: string) {}

  get description(): string {
    return this.dir;
  }

  async shippedThrough(): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    let newest = 0n;
    for (const name of await readdir(this.dir)) {
      const match = SHIPPED_PIECE_NAME.exec(name);
      if (match && BigInt(match[2]) > newest) newest = BigInt(match[2]);
    }
    return newest.toString();
  }

  async deliver({ afterSeq, throughSeq, lines }: ShipPiece): Promise<string> {
    const file = join(this.dir, shippedPieceName(afterSeq, throughSeq));
    // On disk before this returns: retention takes the directory's pieces for shipped events.
    await writeFileDurably(file, lines);
    return file;
  }
}
