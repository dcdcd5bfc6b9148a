import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ExportFileError, verifyExportFile } from './audit-export-file-verifier';

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
