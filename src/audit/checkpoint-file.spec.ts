import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { Checkpoint } from './audit-chain';
import { appendableTail, CheckpointFileError, checkpointFileConflict, readCheckpointFile } from './checkpoint-file';

const checkpoint = (id: number, prevMac: string, mac: string): Checkpoint => ({
  id,
  createdAt: '2026-12-06T00:00:00.000Z',
  chains: 1,
  events: id,
  maxSeq: String(id),
  digest: 'd',
  prevMac,
  mac,
});

describe("checkpointFileConflict (may a checkpoint be appended after the file's last one?)", () => {
  const last = checkpoint(5, 'm4', 'm5');

  it("appends while the table holds the file's last checkpoint as it was, whatever the new one's id (files of their own, appends in turn)", () => {
    assert.equal(checkpointFileConflict(last, 'm5'), undefined);
  });

  it('refuses once the table no longer holds it, or holds another under its id: the table went back', () => {
    assert.equal(checkpointFileConflict(last, undefined), "the file's last checkpoint, 5, is not in the table");
    assert.equal(checkpointFileConflict(last, 'another'), "the file's last checkpoint, 5, differs from the table's");
  });
});

describe('appendableTail (what the next append must know)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-checkpoint-file-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('is nothing for a file not made yet or empty, and the last checkpoint otherwise', async () => {
    assert.deepEqual(await appendableTail(join(dir, 'none.ndjson')), { last: undefined, endsMidLine: false });
    writeFileSync(join(dir, 'empty.ndjson'), '');
    assert.deepEqual(await appendableTail(join(dir, 'empty.ndjson')), { last: undefined, endsMidLine: false });
    writeFileSync(join(dir, 'two.ndjson'), `${JSON.stringify(checkpoint(1, '', 'm1'))}\n${JSON.stringify(checkpoint(2, 'm1', 'm2'))}\n`);
    const two = await appendableTail(join(dir, 'two.ndjson'));
    assert.deepEqual({ id: two.last?.id, endsMidLine: two.endsMidLine }, { id: 2, endsMidLine: false });
  });

  it('finds the last checkpoint before an append cut short, and says the file ends mid-line (the next one starts a line of its own)', async () => {
    writeFileSync(join(dir, 'cut.ndjson'), `${JSON.stringify(checkpoint(1, '', 'm1'))}\n${JSON.stringify(checkpoint(2, 'm1', 'm2')).slice(0, 30)}`);
    const cut = await appendableTail(join(dir, 'cut.ndjson'));
    assert.deepEqual({ id: cut.last?.id, endsMidLine: cut.endsMidLine }, { id: 1, endsMidLine: true });
    writeFileSync(join(dir, 'garbage.ndjson'), 'not a checkpoint\n');
    assert.deepEqual(await appendableTail(join(dir, 'garbage.ndjson')), { last: undefined, endsMidLine: false });
  });
});

describe('readCheckpointFile: a damaged tail', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-checkpoint-tail-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const line = (id: number) => JSON.stringify(checkpoint(id, `m${id - 1}`, `m${id}`));
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };

  it('answers the last line that is a checkpoint, and the lines after it: an append cut short (no newline), an edit', async () => {
    const cut = await readCheckpointFile(file('cut.ndjson', `${line(1)}\n${line(2)}\n${line(3).slice(0, 25)}`));
    assert.equal(cut.checkpoint.id, 2);
    assert.deepEqual(cut.damaged, { lines: 1, bytes: 25, unterminated: true });
    const edited = await readCheckpointFile(file('edited.ndjson', `${line(1)}\n${line(2)}\nnot json\n[3]\n\n`));
    assert.equal(edited.checkpoint.id, 2);
    assert.deepEqual(edited.damaged, { lines: 2, bytes: 11, unterminated: false });
    const whole = await readCheckpointFile(file('whole.ndjson', `${line(1)}\n${line(2)}\n`));
    assert.equal(whole.checkpoint.id, 2);
    assert.equal(whole.damaged, undefined);
  });

  it('looks only at the last 64 KiB, and not at the line cut by its start', async () => {
    const filler = `${line(1)}\n`.repeat(Math.ceil(70_000 / (line(1).length + 1)));
    const tail = await readCheckpointFile(file('long.ndjson', `${filler}${line(2)}\n{"id":`));
    assert.equal(tail.checkpoint.id, 2);
    assert.equal(tail.damaged?.lines, 1);
    // The window starts inside the first line, just where what is left of it reads as a checkpoint: not a line, not used.
    const rest = `{"id":9,"pad":"${'p'.repeat(65_536 - 119)}"}`;
    const cutByWindow = file('window.ndjson', `${'z'.repeat(1000)}${rest}\n${'b'.repeat(100)}\n`);
    assert.equal(Buffer.byteLength(`${rest}\n${'b'.repeat(100)}\n`), 65_536);
    await assert.rejects(readCheckpointFile(cutByWindow), /window\.ndjson: no line of its last 64 KiB is a checkpoint/);
  });

  it("refuses a file without any checkpoint (CheckpointFileError): the operator's error, nothing to verify against", async () => {
    for (const text of ['', '\n\n', '{"id":', 'garbage\n[1]\n']) {
      await assert.rejects(readCheckpointFile(file('none.ndjson', text)), (error: unknown) => {
        assert.ok(error instanceof CheckpointFileError, String(error));
        assert.match(error.message, /none\.ndjson: no line is a checkpoint/);
        return true;
      });
    }
  });
});
