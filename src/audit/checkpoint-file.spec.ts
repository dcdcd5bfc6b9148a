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
  const c1 = checkpoint(1, '', 'm1');
  const c2 = checkpoint(2, 'm1', 'm2');
  const c3 = checkpoint(3, 'm2', 'm3');

  it('appends the next checkpoint, or a later one (an instance may write a file of its own, and skip ids)', () => {
    assert.equal(checkpointFileConflict(c1, c2), undefined);
    assert.equal(checkpointFileConflict(c1, c3), undefined);
  });

  it("appends a checkpoint after its successor when another instance's append came first", () => {
    assert.equal(checkpointFileConflict(c3, c2), undefined);
  });

  it('refuses one numbered at or before the last one, and a next one that does not follow it: the table went back', () => {
    assert.match(checkpointFileConflict(c2, checkpoint(2, 'm1', 'other'))!, /already holds checkpoint 2, at or after 2/);
    assert.match(checkpointFileConflict(c3, checkpoint(2, 'm1', 'other'))!, /already holds checkpoint 3, at or after 2/);
    assert.match(checkpointFileConflict(c2, checkpoint(3, 'other', 'm3'))!, /checkpoint 2 is not the one checkpoint 3 follows/);
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
