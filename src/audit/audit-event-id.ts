import { randomUUID } from 'node:crypto';

/**
 * An audit event's id: a UUID version 7 (RFC 9562), its first 48 bits the time in ms, the
 * other 74 of its 122 free bits random. Time-ordered ids keep the primary key's inserts at the
 * right edge of the index, as `seq`'s are: with random (v4) ids every event dirtied a random
 * leaf page of its month's key index, which at millions of events a month is a page read and,
 * with a small shared_buffers, a page written back per event (the cleanup's batches). The
 * random bits come from randomUUID (its pooled randomness, variant bits already set).
 */
export function auditEventId(nowMs: number = Date.now()): string {
  const v4 = randomUUID(); // xxxxxxxx-xxxx-4xxx-Nxxx-xxxxxxxxxxxx
  const time = Math.trunc(nowMs).toString(16).padStart(12, '0');
  return `${time.slice(0, 8)}-${time.slice(8, 12)}-7${v4.slice(15)}`;
}
