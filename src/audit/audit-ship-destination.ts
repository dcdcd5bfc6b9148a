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
  /** The `throughSeq` of the newest piece delivered ('0' when none): where the next one starts. */
  shippedThrough(runner: QueryRunner): Promise<string>;
  /**
   * Delivers the piece, reading its lines to the end, and records it so that shippedThrough
   * moves to its `throughSeq`; or throws, having recorded nothing (the lines are then destroyed
   * or read to the end). Returns the piece's name (its file's name, its URL's and header's).
   */
  deliver(piece: ShipPiece, runner: QueryRunner): Promise<string>;
}
