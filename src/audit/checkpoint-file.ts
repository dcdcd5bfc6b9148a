import { open, stat } from 'node:fs/promises';
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

/**
 * Why a checkpoint must not be appended to a file whose last checkpoint is `last`, given the
 * MAC the checkpoints table holds under `last.id` (undefined: no such row); undefined when it
 * may. The file is the record of the table's checkpoints kept outside the database: after a
 * restore from an older backup, a failover that lost the newest writes, or the checkpoints'
 * tail deleted, the table numbers its checkpoints again from where it went back to, and one
 * appended after the file's newer ones would become the file's last line, the one verification
 * compares with, and agree with the table: the loss hidden. The table is append-only and keeps
 * every checkpoint, so the file's last one must be there, unchanged; ids may otherwise skip or
 * come out of order (instances may write files of their own, or append to one in turn).
 */
export function checkpointFileConflict(last: Checkpoint, storedMac: string | undefined): string | undefined {
  if (storedMac === undefined) return `the file's last checkpoint, ${last.id}, is not in the table`;
  if (storedMac !== last.mac) return `the file's last checkpoint, ${last.id}, differs from the table's`;
  return undefined;
}

/** The file's last checkpoint, or undefined when the file does not exist yet or holds nothing. */
export async function lastCheckpointIfAny(path: string): Promise<Checkpoint | undefined> {
  try {
    const { size } = await stat(path);
    if (size === 0) return undefined;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  return readLastCheckpoint(path);
}
