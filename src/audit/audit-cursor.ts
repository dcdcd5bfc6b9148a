import { BadRequestException } from '@nestjs/common';

/**
 * The audit list's opaque cursor: the last event of a page. `a2.<seq>.<created_at in µs since
 * the epoch>` carries both keys, so that it continues a page in either order the list uses
 * (seq, or created_at then seq when a time filter asks for it; see AuditService.list). The
 * `a1.<seq>` cursors of earlier versions are still accepted.
 */
export interface AuditCursor {
  seq: string;
  /** Absent in an `a1` cursor. */
  micros: string | null;
}

const MAX_BIGINT = 9223372036854775807n;

/** What a cursor looks like (base64url); the OpenAPI document states it. */
export const AUDIT_CURSOR_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

export function encodeCursor(seq: string, micros?: string): string {
  return Buffer.from(micros === undefined ? `a1.${seq}` : `a2.${seq}.${micros}`, 'utf8').toString('base64url');
}

/** A cursor we issued, or a 400 for anything else. */
export function decodeCursor(cursor: string): AuditCursor {
  const decoded = AUDIT_CURSOR_PATTERN.test(cursor) ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  const match = /^a1\.([1-9][0-9]{0,18})$/.exec(decoded) ?? /^a2\.([1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,17})$/.exec(decoded);
  if (!match || BigInt(match[1]) > MAX_BIGINT) throw new BadRequestException(['cursor is invalid']);
  return { seq: match[1], micros: match[2] ?? null };
}
