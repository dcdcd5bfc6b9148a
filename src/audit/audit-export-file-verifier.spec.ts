import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { chainedEventOf, chainKeyOf, eventHash, GENESIS_HASH } from './audit-chain';
import { ExportFileError, type ExportFileVerification, verifyExportFile } from './audit-export-file-verifier';
import { type AuditExportLine, ExportDigest, ndjsonLine, sealFilterOf, sealOf, storedRowOf } from './audit-export-format';

const MIB = 1024 * 1024;

describe('verifyExportFile: the length of a line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-verify-lines-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses a line longer than 4 MiB as not an export (ExportFileError), without reading it whole', async () => {
    // 8 MiB without a newline: read whole (and split again at every chunk), it was only refused once it had all of it.
    const file = join(dir, 'no-newlines.ndjson');
    writeFileSync(file, Buffer.alloc(8 * MIB, 'a'));
    const refusal = await verifyExportFile(file, 'key').then(
      () => assert.fail('verified'),
      (error: unknown) => error,
    );
    assert.ok(refusal instanceof ExportFileError, String(refusal));
    assert.match(refusal.message, /^Line 1 is longer than 4 MiB, more than an audit export writes on a line/);
  });

  it('reads a line of 4 MiB (as long as a shipped piece’s line may be) up to its parsing', async () => {
    const file = join(dir, 'long-line.ndjson');
    writeFileSync(file, `${'a'.repeat(4 * MIB)}\n`);
    await assert.rejects(verifyExportFile(file, 'key'), (error: unknown) => {
      assert.ok(error instanceof ExportFileError);
      assert.match(error.message, /^Line 1 is not JSON/);
      return true;
    });
  });
});

const KEY = 'k'.repeat(64);
const USER = '5f0c4e7a-1b2c-4d3e-8f90-a1b2c3d4e5f6';

/** A whole export (version 1, no filter) of four events of one user's chain, as its lines (the seal last), made with KEY. */
function exportLines(): string[] {
  const digest = new ExportDigest();
  const lines: AuditExportLine[] = [];
  let prevHash = GENESIS_HASH;
  for (let position = 1; position <= 4; position++) {
    const line: AuditExportLine = {
      seq: String(10 + position),
      id: `00000000-0000-4000-8000-00000000000${position}`,
      type: 'LOGIN',
      userId: USER,
      sessionId: null,
      ipAddress: '192.0.2.1',
      userAgent: 'test',
      createdAt: `2026-12-0${position}T10:00:00.123456Z`,
      metadata: { method: 'password' },
      chainKey: chainKeyOf(USER),
      position,
      prevHash,
      hash: null,
    };
    line.hash = eventHash(KEY, prevHash, chainedEventOf(storedRowOf(line), line.chainKey!, position));
    prevHash = line.hash;
    digest.add(line.seq, line.hash);
    lines.push(line);
  }
  return [...lines, sealOf(KEY, sealFilterOf({}), digest)].map((l) => ndjsonLine(l).slice(0, -1));
}

describe('verifyExportFile: a line an export does not write', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-verify-malformed-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  let files = 0;
  const verify = (text: string | Buffer) => {
    const file = join(dir, `export-${++files}.ndjson`);
    writeFileSync(file, text);
    return verifyExportFile(file, KEY);
  };
  /** The export with line `n` (1-based) edited. */
  const edited = (n: number, edit: (line: string) => string) =>
    `${exportLines()
      .map((l, i) => (i + 1 === n ? edit(l) : l))
      .join('\n')}\n`;
  const assertBroken = (v: ExportFileVerification, line: number, id: string | null, reason: RegExp) => {
    assert.equal(v.ok, false, JSON.stringify(v));
    assert.equal(v.brokenLine, line, v.reason ?? '');
    assert.equal(v.brokenId, id, v.reason ?? '');
    assert.match(v.reason ?? '', reason);
  };
  const refused = async (text: string | Buffer, message: RegExp) => {
    await assert.rejects(verify(text), (error: unknown) => {
      assert.ok(error instanceof ExportFileError, String(error));
      assert.match(error.message, message);
      return true;
    });
  };
  const idOf = (n: number) => (JSON.parse(exportLines()[n - 1]) as AuditExportLine).id;

  it('(the fixture itself) verifies intact', async () => {
    const v = await verify(edited(0, (l) => l));
    assert.equal(v.ok, true, v.reason ?? '');
    assert.equal(v.linked, 4);
  });

  // Each of these was an ExportFileError (exit code 2, "cannot be used") until 0.24.1, where a
  // cut at a line's end was a broken file (1).
  it('a file cut in the middle of a line is broken at that line, not unusable', async () => {
    const text = edited(0, (l) => l);
    const third = text.split('\n').slice(0, 2).join('\n').length + 1;
    assertBroken(
      await verify(text.slice(0, third + 30)),
      3,
      null,
      /^Line 3 is not JSON, as every line of an export is: the file was cut short in the middle of a line/,
    );
  });

  it('an event whose field is out of shape (a hash upper-cased, a position of 0 or a string) is broken at its line, named by its id and seq', async () => {
    assertBroken(
      await verify(edited(2, (l) => l.replace(/"hash":"([0-9a-f]+)"/, (_, h: string) => `"hash":"${h.toUpperCase()}"`))),
      2,
      idOf(2),
      new RegExp(`^Line 2 \\(event ${idOf(2)}, seq 12\\): hash is "[0-9A-F]{64}", not what an audit export writes: it was altered$`),
    );
    assertBroken(
      await verify(edited(3, (l) => l.replace('"position":3', '"position":0'))),
      3,
      idOf(3),
      /^Line 3 \(event \S+, seq 13\): position is 0, not what/,
    );
    assertBroken(await verify(edited(3, (l) => l.replace('"position":3', '"position":"x"'))), 3, idOf(3), /position is "x"/);
    assertBroken(await verify(edited(2, (l) => l.replace(/"seq":"12",/, ''))), 2, idOf(2), /^Line 2 \(event \S+\): seq is missing/);
    // On the first line too, once it has an event's fields: the file is an export.
    assertBroken(
      await verify(edited(1, (l) => l.replace('"position":1', '"position":0'))),
      1,
      idOf(1),
      /^Line 1 \(event \S+, seq 11\): position is 0/,
    );
  });

  it('a line that is not an object, or longer than 4 MiB, after the first is broken at its line; the lines after it are still read', async () => {
    const notObject = await verify(edited(2, () => '[1,2]'));
    assertBroken(notObject, 2, null, /^Line 2 is not a JSON object/);
    assert.equal(notObject.lines, 3, 'the events on lines 1, 3 and 4');
    // Skipped up to its end without being kept, then read on.
    const long = await verify(edited(2, () => `"${'a'.repeat(5 * MIB)}"`));
    assertBroken(long, 2, null, /^Line 2 is longer than 4 MiB, more than an audit export writes on a line: it was altered$/);
    assert.equal(long.lines, 3, 'the events on lines 1, 3 and 4');
  });

  it('a seal out of shape (an unknown format, a version 1 seal given a range) is broken at its line', async () => {
    assertBroken(
      await verify(edited(5, (l) => l.replace('sessionary.audit.export.v1', 'sessionary.audit.export.v9'))),
      5,
      null,
      /^Line 5 \(the seal\) is not a seal an export writes \(the format "sessionary\.audit\.export\.v9" is not/,
    );
    assertBroken(
      await verify(edited(5, (l) => l.replace('"lines":4', '"throughSeq":"14","lines":4'))),
      5,
      null,
      /\(it has fields no sessionary\.audit\.export\.v1 seal has \(throughSeq\)\): it was altered/,
    );
    // A line after it still comes after the seal, and is not read as an event.
    assertBroken(await verify(`${edited(5, (l) => l.replace('"lines":4', '"lines":-1'))}${exportLines()[0]}\n`), 5, null, /lines is not a count/);
  });

  it('a file that is not an export at all is still ExportFileError (exit code 2): empty, its first line not JSON, not an object, not an export line', async () => {
    await refused('', /is empty: not an audit export/);
    await refused('\n', /^Line 1 is not JSON/);
    await refused(`${exportLines()[0].slice(0, 40)}`, /^Line 1 is not JSON/);
    await refused('[1]\n', /^Line 1 is not a JSON object/);
    await refused('{"name":"a checkpoint, say","id":3}\n', /^Line 1 does not have the fields of an audit export's event/);
    await refused('{"seal":"another.format","lines":0}\n', /^Line 1 \(the seal\): the format "another\.format" is not/);
  });
});
