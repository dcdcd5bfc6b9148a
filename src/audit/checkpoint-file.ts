import { open } from 'node:fs/promises';
import type { Checkpoint } from './audit-chain';

/*
 * The checkpoint file an operator keeps outside the database (AUDIT_CHECKPOINT_FILE), as
 * verification reads it back. Apart from the verifier so that the CLI can tell its errors from
 * a broken log without loading the application.
 */

/** The last line of a checkpoint file is looked for in its last 64 KiB (one line is about 400 bytes). */
const FILE_TAIL_BYTES = 65_536;

/** The checkpoint file cannot be read or holds no checkpoint: the operator's error, not a broken log. */
export class CheckpointFileError extends Error {}

/** The last non-empty line of an NDJSON checkpoint file, reading only its tail. */
export async function readLastCheckpoint(path: string): Promise<Checkpoint> {
  let text: string;
  try {
    const file = await open(path, 'r');
    try {
      const { size } = await file.stat();
      const length = Math.min(size, FILE_TAIL_BYTES);
      const buffer = Buffer.alloc(length);
      await file.read(buffer, 0, length, size - length);
      text = buffer.toString('utf8');
    } finally {
      await file.close();
    }
  } catch (error) {
    throw new CheckpointFileError(`${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const last = lines[lines.length - 1];
  let parsed: unknown;
  try {
    parsed = last === undefined ? undefined : JSON.parse(last);
  } catch {
    parsed = undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || typeof (parsed as Checkpoint).id !== 'number') {
    throw new CheckpointFileError(`${path}: the last line is not a checkpoint`);
  }
  return parsed as Checkpoint;
}
