import { open } from 'node:fs/promises';
import type { ShippedEvent } from './audit-ship-destination';

/** Bytes read from a piece's end at a time: a seal and an event line fit many times over. */
const CHUNK_BYTES = 64 * 1024;
/** A line longer than this is not a piece's (a line holds one event: its user agent and metadata are bounded). */
const MAX_TAIL_BYTES = 4 * 1024 * 1024;

/**
 * The last event a shipped piece holds (the line before its seal), or null when its seal says
 * it holds none. Reads the file's end only, however large the piece. Throws when the file does
 * not end as a piece does (a seal after the lines it counts).
 */
export async function lastEventOfPiece(file: string): Promise<ShippedEvent | null> {
  const [sealLine, eventLine] = await lastLines(file, 2);
  const seal = parseObject(sealLine, file);
  if (typeof seal.seal !== 'string' || typeof seal.lines !== 'number') throw notAPiece(file);
  if (seal.lines === 0) return null;
  if (eventLine === undefined) throw notAPiece(file);
  const line = parseObject(eventLine, file);
  const { seq, chainKey, position, hash, createdAt } = line;
  if (
    typeof seq !== 'string' ||
    !/^\d+$/.test(seq) ||
    typeof createdAt !== 'string' ||
    !Number.isFinite(Date.parse(createdAt)) ||
    !(chainKey === null || typeof chainKey === 'string') ||
    !(position === null || Number.isSafeInteger(position)) ||
    !(hash === null || typeof hash === 'string') ||
    // The chain fields are all there, or none (an event outside every chain).
    (chainKey === null) !== (position === null) ||
    (chainKey === null) !== (hash === null)
  ) {
    throw notAPiece(file);
  }
  return { seq, chainKey, position: position as number | null, hash, createdAt };
}

/** The file's last `count` lines, the last first (a final newline ends the last line, it does not start another). */
async function lastLines(file: string, count: number): Promise<string[]> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    let tail = Buffer.alloc(0);
    let start = size;
    for (;;) {
      const lines = tail.toString('utf8').replace(/\n$/, '').split('\n');
      // Whole lines only: the first one read may be cut, unless the read reached the file's start.
      if (start === 0 || lines.length > count)
        return lines
          .slice(start === 0 ? 0 : 1)
          .reverse()
          .slice(0, count);
      if (size - start >= MAX_TAIL_BYTES) throw notAPiece(file);
      const length = Math.min(CHUNK_BYTES, start);
      start -= length;
      const chunk = Buffer.alloc(length);
      await handle.read(chunk, 0, length, start);
      tail = Buffer.concat([chunk, tail]);
    }
  } finally {
    await handle.close();
  }
}

function parseObject(line: string, file: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(line);
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // below
  }
  throw notAPiece(file);
}

function notAPiece(file: string): Error {
  return new Error(`${file} does not end as a shipped piece does (its last line a seal, after the event lines it counts)`);
}
