import type { Readable } from 'node:stream';
import type { QueryRunner } from 'typeorm';

/** Where the shipping task sends the log's pieces: the keys of a tick's outcome and of /metrics' `destination` label. */
export type ShipDestinationKind = 'directory' | 'http';

/** One piece of the log: an export after `afterSeq` through `throughSeq` (format v2), read once. */
export interface ShipPiece {
  afterSeq: string;
  throughSeq: string;
  lines: Readable;
}

/** An event as a shipped piece holds it: enough to find it again in the log (ShippedLogCheck). */
export interface ShippedEvent {
  seq: string;
  chainKey: string | null;
  position: number | null;
  hash: string | null;
  /** Its time as the line has it (a hint for the lookup: its month). */
  createdAt: string;
}

/**
 * The end of a destination's pieces: the newest event they hold (null when the pieces read hold
 * none), and the seq after which no piece holds an event (that event's seq, or the start of the
 * pieces read).
 */
export interface ShippedTail {
  lastEvent: ShippedEvent | null;
  noEventsAfter: string;
}

/** Where a destination's copy of the log ends. */
export interface ShippedEnd {
  /** The `throughSeq` of the newest piece delivered ('0' when none): where the next one starts. */
  throughSeq: string;
  /**
   * What the destination's own pieces say of their last events, when they can be read back (a
   * directory; an endpoint cannot be asked).
   */
  readTail?: () => Promise<ShippedTail>;
}

/**
 * A place the log is shipped to, piece after piece (AuditShipTask): it says where its newest
 * piece ends and takes the next one whole or not at all.
 */
export interface ShipDestination {
  readonly kind: ShipDestinationKind;
  /** For log lines: where, without any credential. */
  readonly description: string;
  /** The session advisory lock under which instances shipping here take turns. */
  readonly lockKey: string;
  /** Where its copy ends: the next piece starts after `throughSeq`. */
  shippedEnd(runner: QueryRunner): Promise<ShippedEnd>;
  /**
   * Delivers the piece, reading its lines to the end, and records it so that shippedEnd's
   * `throughSeq` moves to the piece's; or throws, having recorded nothing (the lines are then
   * destroyed or read to the end). Returns the piece's name (its file's name, its URL's and header's).
   */
  deliver(piece: ShipPiece, runner: QueryRunner): Promise<string>;
}
