import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { Checkpoint } from './audit-chain';
import { checkpointFileConflict, lastCheckpointIfAny } from './checkpoint-file';

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

describe('lastCheckpointIfAny', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-checkpoint-file-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('is undefined for a file not made yet or empty, and the last line otherwise', async () => {
    assert.equal(await lastCheckpointIfAny(join(dir, 'none.ndjson')), undefined);
    writeFileSync(join(dir, 'empty.ndjson'), '');
    assert.equal(await lastCheckpointIfAny(join(dir, 'empty.ndjson')), undefined);
    writeFileSync(join(dir, 'two.ndjson'), `${JSON.stringify(checkpoint(1, '', 'm1'))}\n${JSON.stringify(checkpoint(2, 'm1', 'm2'))}\n`);
    assert.equal((await lastCheckpointIfAny(join(dir, 'two.ndjson')))?.id, 2);
  });
});
