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

/** The lines at the end of a checkpoint file, after its last checkpoint, that are not checkpoints. */
export interface CheckpointFileDamage {
  lines: number;
  bytes: number;
  /** Whether the file ends without a newline, as an append cut short leaves it. */
  unterminated: boolean;
}

/** A checkpoint file's last checkpoint, and what follows it that is not one. */
export interface CheckpointFileTail {
  /** The last line that parses as a checkpoint. */
  checkpoint: Checkpoint;
  /** The lines after it that do not (a damaged tail), if any. */
  damaged?: CheckpointFileDamage;
}

/**
 * The last line of an NDJSON checkpoint file that parses as a checkpoint, and the lines after
 * it that do not, reading only the file's tail (its last FILE_TAIL_BYTES). Lines after the last
 * checkpoint are not the file's end to ignore: verification reports them (a crash mid-append
 * leaves a partial line, but so does an edit that hides the newest checkpoint), after verifying
 * against the last checkpoint there is. Until 0.24.1 a damaged last line stopped the
 * verification altogether (exit code 2).
 */
export async function readCheckpointFile(path: string): Promise<CheckpointFileTail> {
  let text: string;
  let from: number;
  try {
    const file = await open(path, 'r');
    try {
      const { size } = await file.stat();
      const length = Math.min(size, FILE_TAIL_BYTES);
      from = size - length;
      const buffer = Buffer.alloc(length);
      await file.read(buffer, 0, length, from);
      text = buffer.toString('utf8');
    } finally {
      await file.close();
    }
  } catch (error) {
    throw new CheckpointFileError(`${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const lines = text.split('\n');
  // The tail's first line starts before it (unless the tail is the whole file): not a line to parse.
  if (from > 0) lines.shift();
  let damagedLines = 0;
  let damagedBytes = 0;
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i].trim();
    if (!line) continue;
    const checkpoint = checkpointOf(line);
    if (checkpoint) {
      return {
        checkpoint,
        // The last piece of the split is what follows the file's last newline.
        ...(damagedLines ? { damaged: { lines: damagedLines, bytes: damagedBytes, unterminated: lines[lines.length - 1].trim() !== '' } } : {}),
      };
    }
    damagedLines++;
    damagedBytes += Buffer.byteLength(lines[i]);
  }
  throw new CheckpointFileError(
    from > 0 ? `${path}: no line of its last ${FILE_TAIL_BYTES / 1024} KiB is a checkpoint` : `${path}: no line is a checkpoint`,
  );
}

/** A line as a checkpoint: a JSON object with a numeric id (its MAC and fields are the verification's to judge). */
function checkpointOf(line: string): Checkpoint | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || typeof (parsed as Checkpoint).id !== 'number') return undefined;
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

/**
 * What an append to the checkpoint file must know: its last checkpoint (after which lines that
 * are not checkpoints may follow: an append cut short), and whether it ends mid-line, so that
 * the next checkpoint starts a line of its own rather than joining the cut one (which made both
 * one unreadable line, and left the file's newest checkpoint an older one until the next append).
 */
export async function appendableTail(path: string): Promise<{ last: Checkpoint | undefined; endsMidLine: boolean }> {
  let size: number;
  try {
    ({ size } = await stat(path));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { last: undefined, endsMidLine: false };
    throw error;
  }
  if (size === 0) return { last: undefined, endsMidLine: false };
  const file = await open(path, 'r');
  let lastByte: number;
  try {
    const byte = Buffer.alloc(1);
    await file.read(byte, 0, 1, size - 1);
    lastByte = byte[0];
  } finally {
    await file.close();
  }
  const tail = await readCheckpointFile(path).catch((error: unknown) => {
    if (error instanceof CheckpointFileError) return undefined; // no checkpoint in its tail: nothing to compare with
    throw error;
  });
  return { last: tail?.checkpoint, endsMidLine: lastByte !== 0x0a };
}
