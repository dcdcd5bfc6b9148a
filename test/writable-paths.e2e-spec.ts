import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { AuditChainService } from '../src/audit/audit-chain.service';
import { ConfigurationError } from '../src/config/configuration-error';
import { login, registerUser } from './helpers/factories';
import { createTestApp, TestApp } from './helpers/test-app';

/**
 * The paths a background job writes now and then (AUDIT_CHECKPOINT_FILE, AUDIT_SHIP_DIR,
 * AUDIT_ARCHIVE_DIR) are checked at boot: one the service cannot write stops it, saying which
 * and why, instead of failing one run at a time (a month later, for retention's archive).
 */
describe('paths the background jobs write to (e2e)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-paths-'));
  // A regular file: nothing can be created under it, whoever runs the test (root included).
  const aFile = join(dir, 'a-file');
  writeFileSync(aFile, '');
  const opened: TestApp[] = [];
  after(async () => {
    for (const t of opened) await t.close();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const [variable, value, extra, reason] of [
    ['AUDIT_CHECKPOINT_FILE', join(aFile, 'checkpoints.ndjson'), {}, /^AUDIT_CHECKPOINT_FILE cannot be appended to: ENOTDIR/],
    ['AUDIT_SHIP_DIR', join(aFile, 'pieces'), {}, /^AUDIT_SHIP_DIR is not a directory the service can write to: ENOTDIR/],
    [
      'AUDIT_ARCHIVE_DIR',
      join(aFile, 'archive'),
      { AUDIT_RETENTION_DAYS: '30' },
      /^AUDIT_ARCHIVE_DIR is not a directory the service can write to: ENOTDIR/,
    ],
    ['AUDIT_ARCHIVE_DIR', aFile, { AUDIT_RETENTION_DAYS: '30' }, /^AUDIT_ARCHIVE_DIR is not a directory the service can write to: EEXIST/],
  ] as const) {
    it(`refuses to start when ${variable} is ${value === aFile ? 'a file' : 'under a file'}`, async () => {
      await assert.rejects(createTestApp({ [variable]: value, ...extra }), (error: unknown) => {
        assert.ok(error instanceof ConfigurationError, String(error));
        assert.match(error.message, reason);
        return true;
      });
    });
  }

  it('creates them at boot as the jobs would, and counts a checkpoint whose line the file did not take', async () => {
    const checkpointFile = join(dir, 'out', 'checkpoints.ndjson');
    mkdirSync(join(dir, 'out'));
    const t = await createTestApp({
      AUDIT_CHECKPOINT_FILE: checkpointFile,
      AUDIT_SHIP_DIR: join(dir, 'ship', 'pieces'),
      AUDIT_RETENTION_DAYS: '36500',
      AUDIT_ARCHIVE_DIR: join(dir, 'archive'),
    });
    opened.push(t);
    assert.equal(statSync(checkpointFile).mode & 0o777, 0o600);
    assert.equal(readFileSync(checkpointFile, 'utf8'), '');
    for (const made of ['ship/pieces', 'archive']) {
      assert.equal(statSync(join(dir, made)).mode & 0o777, 0o700, made);
      assert.deepEqual(readdirSync(join(dir, made)), [], `${made}: the boot's probe file is gone`);
    }

    const fileFailed = async () => {
      const line = (await t.http.get('/metrics')).text
        .split('\n')
        .find((l) => l.startsWith('sessionary_audit_checkpoints_total{outcome="file_failed"} '));
      assert.ok(line, 'the outcome is in /metrics');
      return Number(line.split(' ')[1]);
    };
    const chain = t.app.get(AuditChainService);
    await login(t.http, await registerUser(t.http));
    assert.ok(await chain.checkpoint(true));
    assert.equal(readFileSync(checkpointFile, 'utf8').trim().split('\n').length, 1);
    assert.equal(await fileFailed(), 0);

    // The file's place taken by a directory: the checkpoint is written to the table, its line nowhere.
    rmSync(checkpointFile);
    mkdirSync(checkpointFile);
    await login(t.http, await registerUser(t.http));
    assert.ok(await chain.checkpoint(true));
    assert.equal(await fileFailed(), 1);
  });
});
