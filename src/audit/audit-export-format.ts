import { createHash, createHmac } from 'node:crypto';
import { isSharedChain, type StoredEventRow } from './audit-chain';
import type { AuditFilter } from './audit.service';

/**
 * The audit export's format, shared by the writer (AuditExportService) and the offline
 * verifier (audit-export-file-verifier.ts), so that both digest and MAC the same values.
 *
 * Version 1: one event a line, in `seq` order, each with every field its HMAC covers, then one
 * last line, the seal, which names the filter and carries a keyed MAC over a digest of the
 * lines. Each event authenticates itself (its chain HMAC); the seal is what shows that no
 * line was deleted, inserted or reordered, and that the file was not cut short.
 *
 * Version 2, written only for an export of the events after a `seq` (the incremental export
 * that ships the log in pieces): the same lines, and a seal that also states that `seq`
 * (`filter.afterSeq`) and the one it runs through (`throughSeq`), both under its MAC: the file
 * holds every event the other filters select with a seq in (afterSeq, throughSeq], and the
 * next piece starts after throughSeq. An export without that filter is still version 1, byte
 * for byte, so that what reads version 1 keeps reading it.
 */
export const EXPORT_FORMAT = 'sessionary.audit.export.v1';
export const EXPORT_FORMAT_RANGED = 'sessionary.audit.export.v2';

/** A row of audit_events as the export reads it: the stored columns, `seq`, and the chain columns (null for an event outside every chain). */
export interface ExportRow extends StoredEventRow {
  seq: string;
  chain_key: string | null;
  chain_pos: string | null;
  prev_hash: string | null;
  hash: string | null;
}

/** One event line. The field names are the admin list's, plus `seq` and the chain fields. */
export interface AuditExportLine {
  /** The global order (a bigint, as a decimal string). */
  seq: string;
  id: string;
  type: string;
  userId: string | null;
  sessionId: string | null;
  ipAddress: string | null;
  userAgent: string | null;
  /** UTC to the microsecond, exactly the text the HMAC covers (the list route rounds to milliseconds). */
  createdAt: string;
  metadata: unknown;
  chainKey: string | null;
  position: number | null;
  prevHash: string | null;
  hash: string | null;
}

/** The filters of an export as the seal states them: instants in ISO form, the user id in lower case, null when absent. */
export interface AuditExportFilterFields {
  from: string | null;
  to: string | null;
  userId: string | null;
  type: string | null;
  /** Version 2 only: the events after this seq (a bigint, as a decimal string). */
  afterSeq?: string;
}

/** The last line of an export. */
export interface AuditExportSeal {
  seal: string;
  filter: AuditExportFilterFields;
  /** Version 2 only: the seq the file runs through, every event up to it that will ever exist having been settled (settledAuditSeq). */
  throughSeq?: string;
  /** Event lines before the seal. */
  lines: number;
  /** SHA-256 over every line's `seq` and `hash`, in file order (ExportDigest). */
  digest: string;
  /** HMAC-SHA-256(AUDIT_HMAC_KEY) over every other field. */
  mac: string;
}

export const EVENT_LINE_FIELDS: ReadonlyArray<keyof AuditExportLine> = [
  'seq',
  'id',
  'type',
  'userId',
  'sessionId',
  'ipAddress',
  'userAgent',
  'createdAt',
  'metadata',
  'chainKey',
  'position',
  'prevHash',
  'hash',
];

/** A row as its line; the fields in a fixed order, so that two exports of the same events are the same bytes. */
export function exportLineOf(row: ExportRow): AuditExportLine {
  return {
    seq: row.seq,
    id: row.id,
    type: row.type,
    userId: row.user_id,
    sessionId: row.session_id,
    ipAddress: row.ip_address,
    userAgent: row.user_agent,
    createdAt: row.created_at,
    metadata: row.metadata,
    chainKey: row.chain_key,
    position: row.chain_pos === null ? null : Number(row.chain_pos),
    prevHash: row.prev_hash,
    hash: row.hash,
  };
}

/** A line back as the stored row the chain hashes (what the database verifier reads). */
export function storedRowOf(line: AuditExportLine): StoredEventRow {
  return {
    id: line.id,
    type: line.type,
    user_id: line.userId,
    session_id: line.sessionId,
    ip_address: line.ipAddress,
    user_agent: line.userAgent,
    metadata: line.metadata,
    created_at: line.createdAt,
  };
}

/**
 * The file name of a piece the service ships (AUDIT_SHIP_DIR): `audit-after-<seq>-through-<seq>.ndjson`,
 * both zero-padded to 19 digits so that the names sort in seq order.
 */
export const SHIPPED_PIECE_NAME = /^audit-after-(\d{19})-through-(\d{19})\.ndjson$/;

export function shippedPieceName(afterSeq: string, throughSeq: string): string {
  return `audit-after-${afterSeq.padStart(19, '0')}-through-${throughSeq.padStart(19, '0')}.ndjson`;
}

export function ndjsonLine(value: AuditExportLine | AuditExportSeal): string {
  return `${JSON.stringify(value)}\n`;
}

/**
 * A running SHA-256 over the lines' `seq` and `hash`. Every other field of a line is covered by
 * its own HMAC, so together they cover the whole line.
 */
export class ExportDigest {
  private readonly hash = createHash('sha256').update(`${EXPORT_FORMAT}\n`);
  lines = 0;

  add(seq: string, hash: string | null): void {
    this.hash.update(`${seq} ${hash ?? '-'}\n`);
    this.lines++;
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

export function sealFilterOf(filter: AuditFilter, afterSeq?: string): AuditExportFilterFields {
  const fields: AuditExportFilterFields = {
    from: filter.from?.toISOString() ?? null,
    to: filter.to?.toISOString() ?? null,
    userId: filter.userId?.toLowerCase() ?? null,
    type: filter.type ?? null,
  };
  if (afterSeq !== undefined) fields.afterSeq = afterSeq;
  return fields;
}

/**
 * True when the export holds the given chain whole, from its first stored event (its base,
 * after retention): no time or type filter, and no user filter for a shared chain (a user filter
 * keeps that user's own chain whole, but takes only that user's events of a shared one). Then a
 * gap in the chain is a deleted line. With a time filter a chain may start anywhere; with a type
 * filter gaps are the rule. An export after a seq (version 2) may start a chain anywhere too,
 * but holds it whole from there on: within a chain, seq rises with position (each append
 * takes its seqs while it holds the chain's head), so a gap after the chain's first line in
 * such a file is a deleted line as well; the verifier only judges gaps after a chain's first line.
 */
export function holdsWholeChain(filter: AuditExportFilterFields, chainKey: string): boolean {
  return filter.from === null && filter.to === null && filter.type === null && (filter.userId === null || !isSharedChain(chainKey));
}

export function sealMac(key: string, seal: Omit<AuditExportSeal, 'mac'>): string {
  const { from, to, userId, type, afterSeq } = seal.filter;
  // Domain-separated from the event and checkpoint MACs made with the same key: the event
  // input starts with 64 hex digits, the checkpoint's with another tag. The format comes
  // first, so a version 1 seal and a version 2 one never share an input.
  const canonical =
    seal.seal === EXPORT_FORMAT
      ? JSON.stringify([seal.seal, from, to, userId, type, seal.lines, seal.digest])
      : JSON.stringify([seal.seal, from, to, userId, type, afterSeq ?? null, seal.throughSeq ?? null, seal.lines, seal.digest]);
  return createHmac('sha256', key).update(canonical).digest('hex');
}

/** The seal: version 2 when the export is of the events after a seq (`throughSeq` then given), version 1 otherwise. */
export function sealOf(key: string, filter: AuditExportFilterFields, digest: ExportDigest, throughSeq?: string): AuditExportSeal {
  const ranged = filter.afterSeq !== undefined;
  if (ranged !== (throughSeq !== undefined)) throw new Error('An export after a seq states the seq it runs through, and only it');
  const fields: Omit<AuditExportSeal, 'mac'> = ranged
    ? { seal: EXPORT_FORMAT_RANGED, filter, throughSeq, lines: digest.lines, digest: digest.digest() }
    : { seal: EXPORT_FORMAT, filter, lines: digest.lines, digest: digest.digest() };
  return { ...fields, mac: sealMac(key, fields) };
}
