import { type FileHandle, open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';

const WRITE_BATCH_BYTES = 64 * 1024;

/**
 * Writes `content` to `file` so that, once this returns, the file is on disk whole (or, after a
 * failure, not there at all): under `<file>.partial` (readable by its owner only), synced, renamed,
 * and its directory synced so that the rename is on disk too. For what is about to become the
 * only copy (a month's archive before the month is dropped, a shipped piece retention counts
 * on): a rename alone makes the file appear whole, but without the syncs a crash soon after could
 * leave it missing or empty (ext4's delayed allocation) while the database's drop is durable.
 */
export async function writeFileDurably(file: string, content: Readable | string): Promise<void> {
  const partial = `${file}.partial`;
  const handle = await open(partial, 'w', 0o600);
  try {
    if (typeof content === 'string') await handle.writeFile(content);
    else await writeInBatches(handle, content);
    await handle.sync();
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw error;
  }
  await handle.close();
  await rename(partial, file);
  await syncDirectory(dirname(file));
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

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
