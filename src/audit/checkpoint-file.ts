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
 * Why `next` must not be appended after `last`, the file's last checkpoint; undefined when it
 * may. The file is the record of the table's checkpoints kept outside the database: after a
 * restore from an older backup, a failover that lost the newest writes, or the checkpoints'
 * tail deleted, the table numbers its next checkpoint again from where it went back to, and
 * that checkpoint appended after the file's newer ones would become the file's last line, the
 * one verification compares with, and agree with the table: the loss would be hidden. Ids may
 * skip (each instance may write a file of its own), and another instance's next checkpoint may
 * be appended just before this one (it then names this one as its predecessor).
 */
export function checkpointFileConflict(last: Checkpoint, next: Checkpoint): string | undefined {
  if (last.id < next.id) {
    if (last.id === next.id - 1 && last.mac !== next.prevMac) {
      return `the file's checkpoint ${last.id} is not the one checkpoint ${next.id} follows`;
    }
    return undefined;
  }
  if (last.id === next.id + 1 && last.prevMac === next.mac) return undefined;
  return `the file already holds checkpoint ${last.id}, at or after ${next.id}`;
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
