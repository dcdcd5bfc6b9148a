import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { lastEventOfPiece } from './shipped-piece-tail';

describe('lastEventOfPiece', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-piece-tail-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  let files = 0;
  const piece = (...lines: unknown[]) => {
    const file = join(dir, `piece-${++files}.ndjson`);
    writeFileSync(file, lines.map((l) => `${typeof l === 'string' ? l : JSON.stringify(l)}\n`).join(''));
    return file;
  };
  const event = (seq: string, extra: Record<string, unknown> = {}) => ({
    seq,
    id: '00000000-0000-4000-8000-000000000000',
    type: 'LOGIN',
    createdAt: '2026-12-06T10:00:00.123456Z',
    chainKey: 'global',
    position: Number(seq),
    prevHash: 'a'.repeat(64),
    hash: `${seq}`.padStart(64, 'f'),
    ...extra,
  });
  const seal = (lines: number) => ({ seal: 'sessionary.audit.export.v2', filter: {}, throughSeq: '9', lines, digest: 'd', mac: 'm' });

  it('answers the line before the seal', async () => {
    const file = piece(event('7'), event('8'), seal(2));
    assert.deepEqual(await lastEventOfPiece(file), {
      seq: '8',
      chainKey: 'global',
      position: 8,
      hash: '8'.padStart(64, 'f'),
      createdAt: '2026-12-06T10:00:00.123456Z',
    });
  });

  it('reads back past its first chunk: a piece larger than 64 KiB, and an event line that is', async () => {
    const many = Array.from({ length: 2000 }, (_, i) => event(String(i + 1)));
    assert.equal((await lastEventOfPiece(piece(...many, seal(2000))))?.seq, '2000');
    const long = event('3', { userAgent: 'é'.repeat(70_000) });
    assert.equal((await lastEventOfPiece(piece(event('2'), long, seal(2))))?.seq, '3');
    assert.equal((await lastEventOfPiece(piece(long, seal(1))))?.seq, '3', 'the whole file read');
  });

  it('answers null for a piece its seal says holds no event', async () => {
    assert.equal(await lastEventOfPiece(piece(seal(0))), null);
  });

  it('refuses a file that does not end as a piece does', async () => {
    for (const file of [
      piece(), // empty
      piece(event('1')), // no seal
      piece(seal(1)), // a seal counting a line that is not there
      piece('not json', seal(1)),
      piece(event('x'), seal(1)),
      piece(event('1', { createdAt: 'yesterday' }), seal(1)),
      piece(event('1', { position: 1.5 }), seal(1)),
      piece(event('1', { position: null }), seal(1)), // a chain without a position
      piece(event('1', { hash: null }), seal(1)), // a chain without a hash
    ]) {
      await assert.rejects(lastEventOfPiece(file), /does not end as a shipped piece does/, file);
    }
  });
});
