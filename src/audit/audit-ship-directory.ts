import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { makeDirectoryDurably, sweepStalePartials, writeFileDurably } from '../common/durable-file';
import { SHIPPED_PIECE_NAME, shippedPieceName } from './audit-export-format';
import type { ShipDestination, ShippedEnd, ShippedTail, ShipPiece } from './audit-ship-destination';
import { lastEventOfPiece } from './shipped-piece-tail';

/** Pieces read back, newest first, looking for the last event shipped (past a run of empty ones). */
const PIECES_READ_BACK = 100;

/**
 * AUDIT_SHIP_DIR: each piece a file of its own, written under a temporary name and linked to
 * its own whole, so a reader (a log shipper, a sync to other storage) never sees a part of one;
 * never over another file (writeFileDurably): a name that holds other bytes fails the tick.
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

  /** The newest piece's `throughSeq`; the last event in the pieces is read back only when asked. */
  async shippedEnd(): Promise<ShippedEnd> {
    await makeDirectoryDurably(this.dir);
    const pieces = (await readdir(this.dir))
      .map((name) => SHIPPED_PIECE_NAME.exec(name))
      .filter((match) => match !== null)
      .map(([name, after, through]) => ({ file: join(this.dir, name), after: BigInt(after), through: BigInt(through) }))
      .sort((x, y) => (x.through === y.through ? 0 : x.through > y.through ? -1 : 1));
    if (!pieces.length) return { throughSeq: '0' };
    return { throughSeq: pieces[0].through.toString(), readTail: () => tailOf(pieces) };
  }

  async deliver({ afterSeq, throughSeq, lines }: ShipPiece): Promise<string> {
    const file = join(this.dir, shippedPieceName(afterSeq, throughSeq));
    // Under the shipping lock (lockKey): no other instance of this deployment writes a piece meanwhile.
    await sweepStalePartials(this.dir, 'audit-after-');
    // On disk before this returns: retention takes the directory's pieces for shipped events.
    await writeFileDurably(file, lines);
    return file;
  }
}

interface PieceFile {
  file: string;
  after: bigint;
  through: bigint;
}

/**
 * The last event in the pieces (newest first), read back from their ends: back from the newest
 * piece while the pieces follow one another (an empty piece holds no event: the one before it
 * may), as far as the first that holds one.
 */
async function tailOf(pieces: PieceFile[]): Promise<ShippedTail> {
  for (let i = 0; i < Math.min(pieces.length, PIECES_READ_BACK); i++) {
    const lastEvent = await lastEventOfPiece(pieces[i].file);
    if (lastEvent) return { lastEvent, noEventsAfter: lastEvent.seq };
    if (pieces[i + 1]?.through !== pieces[i].after) return { lastEvent: null, noEventsAfter: pieces[i].after.toString() };
  }
  return { lastEvent: null, noEventsAfter: pieces[PIECES_READ_BACK - 1].after.toString() };
}
