import { randomBytes } from 'node:crypto';
import { constants, copyFile, type FileHandle, link, mkdir, open, readdir, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';

const WRITE_BATCH_BYTES = 64 * 1024;
/** Bytes compared at a time when a name is taken (an archive may be gigabytes: never read whole). */
const COMPARE_BATCH_BYTES = 1024 * 1024;
/**
 * What link() answers on a file system without hard links (vfat, exFAT, SMB without Unix
 * extensions, FUSE mounts of object storage such as gcsfuse or s3fs): publishing there copies
 * instead (copyWithoutReplacing).
 */
const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/** Where publishFileDurably put the content. */
export interface PublishedFile {
  /** The name it is under (one of those given). */
  file: string;
  /** The same bytes were already there under that name: nothing was written, the file there is kept. */
  reused: boolean;
}

/** Every name given already holds other bytes: nothing was written, and those files are as they were. */
export class FileTakenError extends Error {}

/**
 * Writes `content` to `file` so that, once this returns, the file is on disk whole (or, after a
 * failure, not there at all), and never in place of another file: see publishFileDurably. When
 * `file` already holds the same bytes, it is kept (the write was done before); when it holds
 * others, this throws FileTakenError and leaves it as it is. For what is about to become the
 * only copy (a shipped piece retention counts on): a rename would replace a file of the same
 * name, another log's piece written there by a deployment sharing the directory, which may be
 * the only copy left of its events.
 */
export async function writeFileDurably(file: string, content: Readable | string): Promise<void> {
  await publishFileDurably([file], content);
}

/**
 * `dir` and any parent it lacks (mode 0700), each new entry synced into the directory above it:
 * without that, a crash soon after could lose the directory (an AUDIT_ARCHIVE_DIR moved away and
 * made again at the next drop) with the archive written into it, while the drop is durable.
 */
export async function makeDirectoryDurably(dir: string): Promise<void> {
  const first = await mkdir(dir, { recursive: true, mode: 0o700 });
  if (first === undefined) return; // it was there
  const top = resolve(first);
  for (let path = resolve(dir); ; path = dirname(path)) {
    await syncFile(dirname(path));
    if (path === top || dirname(path) === path) break;
  }
}

/** How old a temporary file must be before sweepStalePartials takes it for a crash's leftover. */
export const STALE_PARTIAL_MS = 24 * 3_600_000;

/**
 * Removes from `dir` the temporary files publishFileDurably leaves when the process dies while
 * writing (`<name starting with prefix>.<random>.partial`) that are older than `olderThanMs`:
 * their names are random (two writers never share one), so no later write replaces them, and
 * a month's archive may be gigabytes. Older than a day, no writer is still at it (a month's
 * export takes minutes). Answers how many went. A file that goes meanwhile is no error.
 */
export async function sweepStalePartials(dir: string, prefix: string, olderThanMs = STALE_PARTIAL_MS): Promise<number> {
  const names = (await readdir(dir).catch(() => [] as string[])).filter((name) => name.startsWith(prefix) && /\.[0-9a-f]{12}\.partial$/.test(name));
  let removed = 0;
  for (const name of names) {
    const file = join(dir, name);
    const info = await stat(file).catch(() => undefined);
    if (!info || Date.now() - info.mtimeMs < olderThanMs) continue;
    await rm(file, { force: true });
    removed++;
  }
  return removed;
}

/**
 * Writes `content` under the first of `names` that is free or already holds the same bytes,
 * never over a file with other bytes (FileTakenError when each name has one). The content goes
 * to a temporary file beside them (`<first name>.<random>.partial`, readable by its owner only:
 * random, so that two writers of the same name never write into one file), synced, then
 * published by a hard link, which, unlike rename(), fails when the name is taken; the temporary
 * name is then removed and the directory synced, so that the new name is on disk too. A file
 * found with the same bytes is synced, with its directory, as if written here (a process that
 * died before its own directory sync may have left it).
 *
 * Why the syncs: a rename or link alone makes the file appear whole, but without them a crash
 * soon after could leave it missing or empty (ext4's delayed allocation) while the database's
 * drop of the same events is durable. Why never replace: the file there may be the only copy of
 * events (a month's archive written before the month was dropped, by this database before it
 * was restored from an older backup, or by another deployment sharing the directory).
 */
export async function publishFileDurably(names: readonly string[], content: Readable | string): Promise<PublishedFile> {
  if (!names.length) throw new Error('publishFileDurably needs a name');
  const partial = `${names[0]}.${randomBytes(6).toString('hex')}.partial`;
  await writePartial(partial, content);
  try {
    for (const file of names) {
      const outcome = await publishAt(partial, file);
      if (outcome === 'other bytes') continue;
      await rm(partial, { force: true });
      if (outcome === 'same bytes') await syncFile(file);
      await syncFile(dirname(file));
      return { file, reused: outcome === 'same bytes' };
    }
    throw new FileTakenError(`${names.join(', ')} already ${names.length > 1 ? 'hold' : 'holds'} other content: nothing was replaced`);
  } finally {
    await rm(partial, { force: true });
  }
}

/** The content under `partial`, synced (removed again when the content fails). */
async function writePartial(partial: string, content: Readable | string): Promise<void> {
  let handle: FileHandle;
  try {
    // 'wx': a name of its own; never another writer's file.
    handle = await open(partial, 'wx', 0o600);
  } catch (error) {
    // Never read: a stream left alone holds what feeds it (an export's pooled connection, its
    // snapshot and its slot), which nothing else would give back.
    if (typeof content !== 'string') content.destroy();
    throw error;
  }
  try {
    if (typeof content === 'string') await handle.writeFile(content);
    else await writeInBatches(handle, content);
    await handle.sync();
  } catch (error) {
    if (typeof content !== 'string') content.destroy();
    await handle.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw error;
  }
  await handle.close();
}

/**
 * Publishes `partial` as `file` unless `file` exists: 'published', or what is there. A file
 * that goes between the refusal and the comparison (someone moved it away) is tried again once.
 */
async function publishAt(partial: string, file: string): Promise<'published' | 'same bytes' | 'other bytes'> {
  for (let attempt = 0; attempt < 2; attempt++) {
    if (await linkWithoutReplacing(partial, file)) return 'published';
    const same = await sameBytes(partial, file);
    if (same !== undefined) return same ? 'same bytes' : 'other bytes';
  }
  return 'other bytes';
}

/** A second name for `partial`, `file`; false when `file` exists. */
async function linkWithoutReplacing(partial: string, file: string): Promise<boolean> {
  try {
    await link(partial, file);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (code !== undefined && NO_HARD_LINKS.has(code)) return copyWithoutReplacing(partial, file);
    throw error;
  }
}

/**
 * Where there are no hard links: a copy that fails when `file` exists (COPYFILE_EXCL), then
 * synced. A reader may see the copy before it is whole, and a crash during it leaves a part
 * under the name, which a later write then finds taken by other bytes (and, for an archive,
 * writes beside it); either is better than replacing a file.
 */
async function copyWithoutReplacing(partial: string, file: string): Promise<boolean> {
  try {
    await copyFile(partial, file, constants.COPYFILE_EXCL);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    // Not there before (that is EEXIST): whatever the copy left (a disk full midway) is its own.
    await rm(file, { force: true });
    throw error;
  }
  await syncFile(file);
  return true;
}

/** Whether the two files hold the same bytes; undefined when `file` is not there (any more). */
async function sameBytes(partial: string, file: string): Promise<boolean | undefined> {
  const mine = await open(partial, 'r');
  let other: FileHandle;
  try {
    other = await open(file, 'r');
  } catch (error) {
    await mine.close();
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const [{ size }, { size: otherSize }] = await Promise.all([mine.stat(), other.stat()]);
    if (size !== otherSize) return false;
    const [a, b] = [Buffer.alloc(COMPARE_BATCH_BYTES), Buffer.alloc(COMPARE_BATCH_BYTES)];
    for (let position = 0; position < size;) {
      const [{ bytesRead }, { bytesRead: otherRead }] = await Promise.all([
        mine.read(a, 0, COMPARE_BATCH_BYTES, position),
        other.read(b, 0, COMPARE_BATCH_BYTES, position),
      ]);
      // None read before the end: the other file shrank meanwhile.
      if (!bytesRead || bytesRead !== otherRead || !a.subarray(0, bytesRead).equals(b.subarray(0, otherRead))) return false;
      position += bytesRead;
    }
    return true;
  } finally {
    await Promise.all([mine.close(), other.close()]);
  }
}

/** The stream's chunks, about 64 KiB a write (writeFile writes each batch whole, from where the last ended). */
async function writeInBatches(handle: FileHandle, content: Readable): Promise<void> {
  let batch: Buffer[] = [];
  let size = 0;
  for await (const chunk of content as AsyncIterable<Buffer | string>) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    batch.push(bytes);
    size += bytes.length;
    if (size >= WRITE_BATCH_BYTES) {
      await handle.writeFile(Buffer.concat(batch, size));
      batch = [];
      size = 0;
    }
  }
  if (size) await handle.writeFile(Buffer.concat(batch, size));
}

/** fsync of a file or a directory (opened read-only: Linux syncs either through such a handle). */
/** Syncs a file or a directory (a new entry in it) to disk. */
export async function syncFile(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
