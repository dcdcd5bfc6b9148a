import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import fsPromises from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import * as durable from './durable-file';
import { writeFileDurably } from './durable-file';

/** Never in place of another file (an archive, a shipped piece: maybe the only copy of its events). */
describe('writeFileDurably and publishFileDurably: never over another file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-publish-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const leftovers = () => readdirSync(dir).filter((name) => name.endsWith('.partial'));

  it('refuses to replace a file with other bytes: the file stays as it was, nothing is left behind', async () => {
    const file = join(dir, 'audit-events-2025-01.ndjson');
    writeFileSync(file, 'the only copy of the dropped month\n');
    await assert.rejects(writeFileDurably(file, Readable.from(['a smaller archive\n'])), /audit-events-2025-01\.ndjson already holds other content/);
    assert.equal(readFileSync(file, 'utf8'), 'the only copy of the dropped month\n');
    assert.deepEqual(leftovers(), []);
  });

  it('destroys a stream it could not write (a directory gone or not writable): what feeds it is given back', async () => {
    let destroyed = false;
    const content = new Readable({
      read() {},
      destroy(error, callback) {
        destroyed = true;
        callback(error);
      },
    });
    await assert.rejects(writeFileDurably(join(dir, 'missing-dir', 'piece.ndjson'), content), /ENOENT/);
    assert.equal(destroyed, true);
  });

  it('makes a directory and the parents it lacks, owner-only, and leaves one that is there as it is', async () => {
    const root = mkdtempSync(join(tmpdir(), 'sessionary-mkdir-'));
    try {
      const deep = join(root, 'a', 'b', 'archive');
      await durable.makeDirectoryDurably(deep);
      assert.equal(statSync(deep).isDirectory(), true);
      assert.equal(statSync(deep).mode & 0o777, 0o700);
      writeFileSync(join(deep, 'kept'), 'x');
      await durable.makeDirectoryDurably(deep);
      assert.deepEqual(readdirSync(deep), ['kept']);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("sweeps a crash's temporary files older than a day, of its prefix only, and leaves a writer's fresh one", async () => {
    const sweep = mkdtempSync(join(tmpdir(), 'sessionary-sweep-'));
    try {
      const old = join(sweep, 'audit-events-2025-01.ndjson.0123456789ab.partial');
      const fresh = join(sweep, 'audit-events-2025-02.ndjson.ba9876543210.partial');
      const otherPrefix = join(sweep, 'audit-after-0000000000000000001-through-0000000000000000002.ndjson.0123456789ab.partial');
      const archive = join(sweep, 'audit-events-2025-01.ndjson');
      for (const file of [old, fresh, otherPrefix, archive]) writeFileSync(file, 'x');
      const dayAndMore = (Date.now() - durable.STALE_PARTIAL_MS - 60_000) / 1000;
      for (const file of [old, otherPrefix, archive]) await fsPromises.utimes(file, dayAndMore, dayAndMore);
      assert.equal(await durable.sweepStalePartials(sweep, 'audit-events-'), 1);
      assert.deepEqual(readdirSync(sweep).sort(), [archive, fresh, otherPrefix].map((f) => f.split('/').pop()).sort());
    } finally {
      rmSync(sweep, { recursive: true, force: true });
    }
  });

  it('keeps a file that already holds the same bytes (the write was done before)', async () => {
    const file = join(dir, 'same.ndjson');
    writeFileSync(file, '{"a":1}\n');
    await writeFileDurably(file, Readable.from(['{"a":', '1}\n']));
    assert.equal(readFileSync(file, 'utf8'), '{"a":1}\n');
    assert.deepEqual(leftovers(), []);
  });

  it('two writers of one name at once: one publishes, the other is refused, and the file is one of theirs whole', async () => {
    const file = join(dir, 'raced.ndjson');
    const [a, b] = ['A'.repeat(300_000), 'B'.repeat(300_000)];
    const outcomes = await Promise.allSettled([
      writeFileDurably(file, Readable.from([a.slice(0, 100_000), a.slice(100_000)])),
      writeFileDurably(file, Readable.from([b.slice(0, 100_000), b.slice(100_000)])),
    ]);
    assert.deepEqual(outcomes.map((o) => o.status).sort(), ['fulfilled', 'rejected'], JSON.stringify(outcomes));
    const winner = outcomes[0].status === 'fulfilled' ? a : b;
    assert.ok(readFileSync(file, 'utf8') === winner, 'the file is the published writer’s, whole');
    assert.deepEqual(leftovers(), []);
  });

  it('publishes under the next name when one holds other bytes, and reuses a name that holds the same', async () => {
    const [first, second, third] = ['m.ndjson', 'm.42.ndjson', 'm.42.t.ndjson'].map((name) => join(dir, name));
    writeFileSync(first, 'another log\n');
    assert.deepEqual(await durable.publishFileDurably([first, second, third], 'this log\n'), { file: second, reused: false });
    assert.deepEqual(await durable.publishFileDurably([first, second, third], Readable.from(['this log\n'])), { file: second, reused: true });
    assert.equal(readFileSync(first, 'utf8'), 'another log\n');
    assert.equal(readFileSync(second, 'utf8'), 'this log\n');
    await assert.rejects(durable.publishFileDurably([first, second], 'a third log\n'), durable.FileTakenError);
    assert.deepEqual(
      readdirSync(dir).filter((name) => name.startsWith('m.')),
      ['m.42.ndjson', 'm.ndjson'],
    );
    assert.deepEqual(leftovers(), []);
  });

  it('publishes by a copy that never replaces where the file system has no hard links', async () => {
    const original = fsPromises.link;
    const refused = Object.assign(new Error('operation not supported'), { code: 'ENOTSUP' });
    let refusals = 0;
    fsPromises.link = () => {
      refusals++;
      return Promise.reject(refused);
    };
    try {
      const file = join(dir, 'no-links.ndjson');
      await writeFileDurably(file, 'copied\n');
      assert.equal(readFileSync(file, 'utf8'), 'copied\n');
      await assert.rejects(writeFileDurably(file, 'other\n'), durable.FileTakenError);
      await writeFileDurably(file, 'copied\n');
      assert.equal(readFileSync(file, 'utf8'), 'copied\n');
      assert.equal(refusals, 3, 'each write tried a hard link first');
    } finally {
      fsPromises.link = original;
    }
    assert.deepEqual(leftovers(), []);
  });
});
