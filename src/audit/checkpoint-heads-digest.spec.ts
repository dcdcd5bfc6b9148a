import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { bucketOf, bucketRange, type HeadsBucket, HeadsBucketer, HeadsRoot, HeadsTreeDigest, isHeadsDigestV2 } from './checkpoint-heads-digest';

const HASH_A = 'a'.repeat(64);
const HASH_B = 'b'.repeat(64);
const HEADS: Array<[string, number, string]> = [
  ['0a1b0000-0000-4000-8000-000000000001', 3, HASH_A],
  ['0a1b0000-0000-4000-8000-000000000002', 1, HASH_B],
  ['0a1c0000-0000-4000-8000-000000000001', 7, HASH_A],
  ['global', 12, HASH_B],
];

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

describe('checkpoint heads digest, format 2', () => {
  it('hashes each bucket of heads in key order, then the buckets, and says its format', () => {
    const bucket1 = sha256(
      'sessionary.audit.heads-bucket.v2\n' +
        `"0a1b0000-0000-4000-8000-000000000001" 3 ${HASH_A}\n` +
        `"0a1b0000-0000-4000-8000-000000000002" 1 ${HASH_B}\n`,
    );
    const bucket2 = sha256(`sessionary.audit.heads-bucket.v2\n"0a1c0000-0000-4000-8000-000000000001" 7 ${HASH_A}\n`);
    const bucket3 = sha256(`sessionary.audit.heads-bucket.v2\n"global" 12 ${HASH_B}\n`);
    const root = sha256(`sessionary.audit.heads.v2\n"0a1b" 2 4 ${bucket1}\n"0a1c" 1 7 ${bucket2}\n"glob" 1 12 ${bucket3}\n`);
    const tree = new HeadsTreeDigest();
    for (const h of HEADS) tree.add(...h);
    assert.deepEqual(tree.finish(), { chains: 4, events: 23, digest: `v2:${root}` });
    assert.equal(isHeadsDigestV2(`v2:${root}`), true);
    assert.equal(isHeadsDigestV2(root), false);
  });

  it('gives the same root from stored buckets as from every head, and another one when any head differs', () => {
    const stored = new Map<string, HeadsBucket>();
    const tree = new HeadsTreeDigest((b) => stored.set(b.bucket, b));
    for (const h of HEADS) tree.add(...h);
    const whole = tree.finish();
    const root = new HeadsRoot();
    for (const b of stored.values()) root.add(b);
    assert.equal(root.digest(), whole.digest);

    // One head moves: only its bucket is hashed again, and the root follows the whole tree's.
    const moved = HEADS.map((h): [string, number, string] => (h[0] === 'global' ? ['global', 13, HASH_A] : h));
    const again: HeadsBucket[] = [];
    const bucketer = new HeadsBucketer((b) => again.push(b));
    bucketer.add(...moved[3]);
    bucketer.flush();
    assert.deepEqual(
      again.map((b) => b.bucket),
      ['glob'],
    );
    stored.set('glob', again[0]);
    const incremental = new HeadsRoot();
    for (const b of stored.values()) incremental.add(b);
    const full = new HeadsTreeDigest();
    for (const h of moved) full.add(...h);
    const expected = full.finish();
    assert.equal(incremental.digest(), expected.digest);
    assert.notEqual(expected.digest, whole.digest);
    assert.equal(incremental.events, 24);
  });

  it('cannot take one key for two: a key is quoted and escaped, so no space, quote or line break in it ends a field or a line', () => {
    // A key that, written bare, would read as the end of its head's line and a whole second head.
    const key = `abcd" 1 ${HASH_A}\n"abce`;
    const bucket = new HeadsTreeDigest();
    bucket.add(key, 2, HASH_B);
    const line = `"abcd\\" 1 ${HASH_A}\\n\\"abce" 2 ${HASH_B}\n`;
    const expected = sha256(`sessionary.audit.heads-bucket.v2\n${line}`);
    const root = sha256(`sessionary.audit.heads.v2\n"abcd" 1 2 ${expected}\n`);
    assert.equal(bucket.finish().digest, `v2:${root}`);
  });

  it('bounds each bucket by a key range that holds exactly its keys', () => {
    assert.equal(bucketOf('0a1b0000-0000-4000-8000-000000000001'), '0a1b');
    assert.equal(bucketOf('ab'), 'ab');
    const keys = ['0a1a', '0a1b', '0a1b0', '0a1bffff', '0a1c', '0a1', 'ab', 'ab\u0001', 'ab0', 'abz', 'global', 'glob', 'gloc'];
    // Byte order, as PostgreSQL's "C" collation compares these ASCII keys.
    const inRange = (key: string, [lo, hi]: [string, string]) => key >= lo && key < hi;
    for (const bucket of ['0a1b', 'ab', 'glob']) {
      const range = bucketRange(bucket);
      assert.deepEqual(
        keys.filter((k) => inRange(k, range)),
        keys.filter((k) => bucketOf(k) === bucket),
        bucket,
      );
    }
    assert.deepEqual(bucketRange('0a1f'), ['0a1f', '0a1g']);
  });
});
