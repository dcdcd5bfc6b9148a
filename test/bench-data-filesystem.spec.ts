import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { describeMount, mountOf } from '../bench/audit/data-filesystem';

// As this machine's /proc/mounts has them: the root with online discard, a tmpfs over part of it.
const PROC_MOUNTS = [
  '/dev/vda / ext4 rw,relatime,discard,resv_strict 0 0',
  'proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0',
  'tmpfs /var/lib/postgresql/tmp tmpfs rw,nosuid,nodev 0 0',
  '/dev/vdb /srv/pg\\040data xfs rw,noatime 0 0',
  '/dev/vdc /srv/pg\\040data xfs rw,noatime,discard 0 0',
  '',
].join('\n');

describe('the audit bench: the data directory’s file system', () => {
  it('finds the mount that holds the directory, not a sibling whose name starts the same', () => {
    assert.deepEqual(mountOf('/var/lib/postgresql/15/main', PROC_MOUNTS), {
      mountPoint: '/',
      type: 'ext4',
      options: ['rw', 'relatime', 'discard', 'resv_strict'],
    });
    assert.equal(mountOf('/var/lib/postgresql/tmp/x', PROC_MOUNTS)?.type, 'tmpfs');
    assert.equal(mountOf('/var/lib/postgresql/tmpfoo', PROC_MOUNTS)?.mountPoint, '/');
  });

  it('reads escaped mount points, and of two mounts on one point the later one', () => {
    assert.deepEqual(mountOf('/srv/pg data/main', PROC_MOUNTS), {
      mountPoint: '/srv/pg data',
      type: 'xfs',
      options: ['rw', 'noatime', 'discard'],
    });
  });

  it('says when the blocks of removed files are trimmed as they go', () => {
    assert.match(
      describeMount(mountOf('/var/lib/postgresql/15/main', PROC_MOUNTS)),
      /^ext4 on \/ \(rw,relatime,discard,resv_strict\); online discard/,
    );
    assert.equal(describeMount({ mountPoint: '/data', type: 'xfs', options: ['rw', 'noatime'] }), 'xfs on /data (rw,noatime)');
    assert.equal(describeMount(undefined), 'unknown (no mount holds it)');
  });
});
