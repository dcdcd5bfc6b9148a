import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { writeFileDurably } from './durable-file';

describe('writeFileDurably', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-durable-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** Counts FileHandle.sync() calls (the file's and its directory's) while `run` runs. */
  async function countingSyncs(run: () => Promise<void>): Promise<number> {
    const probe = await open(join(dir, '.probe'), 'w');
    const prototype = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
    await probe.close();
    const original = prototype.sync;
    let syncs = 0;
    prototype.sync = function (this: unknown) {
      syncs++;
      return original.call(this);
    };
    try {
      await run();
    } finally {
      prototype.sync = original;
    }
    return syncs;
  }

  it('writes a stream or a string whole, owner-only, with the file and its directory synced before it returns', async () => {
    const lines = join(dir, 'piece.ndjson');
    const syncs = await countingSyncs(() => writeFileDurably(lines, Readable.from(['{"a":1}\n', '{"b":2}\n'])));
    assert.equal(syncs, 2, 'the file and the directory');
    assert.equal(readFileSync(lines, 'utf8'), '{"a":1}\n{"b":2}\n');
    assert.equal(statSync(lines).mode & 0o777, 0o600);
    const text = join(dir, 'checkpoint.json');
    assert.equal(await countingSyncs(() => writeFileDurably(text, '{"id":1}\n')), 2);
    assert.equal(readFileSync(text, 'utf8'), '{"id":1}\n');
    assert.ok(!readdirSync(dir).some((name) => name.endsWith('.partial')));
  });

  it('leaves nothing behind when the content fails midway', async () => {
    const failing = new Readable({
      read() {
        this.push('{"a":1}\n');
        this.destroy(new Error('the export failed'));
      },
    });
    const file = join(dir, 'broken.ndjson');
    await assert.rejects(writeFileDurably(file, failing), /the export failed/);
    assert.ok(!readdirSync(dir).some((name) => name.startsWith('broken.ndjson')));
  });
});
