import { createHash, type Hash } from 'node:crypto';

/**
 * The digest a checkpoint states over its chain heads, format 2: a two-level hash tree whose
 * leaves are buckets of heads, so that a checkpoint re-hashes only the buckets whose heads
 * moved and then the bucket digests, not every head (format 1, `ChainListDigest`, was one
 * SHA-256 over every head in key order: 4–5 s a checkpoint at 1M chains, whatever moved).
 *
 * A bucket is the heads whose chain keys share their first BUCKET_CHARS characters (user ids
 * are random UUIDs: 65,536 buckets of evenly spread users; the global chain has its own). Its
 * digest is SHA-256 over its heads in key order; the root is SHA-256 over every bucket's
 * label, counts and digest in key order. Nothing here is keyed: the checkpoint's MAC covers
 * the root, as it covered format 1's digest. The root is written `v2:<hex>`, so a checkpoint
 * says which format its digest is in, under its MAC.
 *
 * Keys and labels go into the hashes as JSON strings: no key can pass for two.
 */
export const BUCKET_CHARS = 4;
export const HEADS_DIGEST_V2 = 'v2:';

export function isHeadsDigestV2(digest: string): boolean {
  return digest.startsWith(HEADS_DIGEST_V2);
}

/** The bucket a chain belongs to (PostgreSQL's `left(chain_key, BUCKET_CHARS)` for the ASCII keys chains have). */
export function bucketOf(chainKey: string): string {
  return chainKey.slice(0, BUCKET_CHARS);
}

/**
 * The range of keys [lo, hi) that holds exactly one bucket's chains, in PostgreSQL's "C"
 * collation (byte order), for ASCII keys: every key that starts with a full-length label and
 * nothing else; for a shorter label (a key that short), that key alone (no text holds NUL,
 * so nothing sorts between it and itself followed by U+0001).
 */
export function bucketRange(bucket: string): [string, string] {
  if (bucket.length < BUCKET_CHARS) return [bucket, `${bucket}\u0001`];
  const last = bucket.length - 1;
  return [bucket, bucket.slice(0, last) + String.fromCharCode(bucket.charCodeAt(last) + 1)];
}

export interface HeadsBucket {
  bucket: string;
  chains: number;
  /** The sum of its heads' positions: the events its chains hold. */
  events: number;
  digest: string;
}

/** Cuts heads streamed in key order into buckets, handing each over once its last head went by. */
export class HeadsBucketer {
  private current: { bucket: string; hash: Hash; chains: number; events: number } | undefined;

  constructor(private readonly emit: (bucket: HeadsBucket) => void) {}

  add(chainKey: string, position: number, hash: string): void {
    const bucket = bucketOf(chainKey);
    if (this.current?.bucket !== bucket) {
      this.flush();
      this.current = { bucket, hash: createHash('sha256').update('sessionary.audit.heads-bucket.v2\n'), chains: 0, events: 0 };
    }
    this.current.hash.update(`${JSON.stringify(chainKey)} ${position} ${hash}\n`);
    this.current.chains++;
    this.current.events += position;
  }

  /** Hands over the bucket in progress (call once the last head was added). */
  flush(): void {
    if (!this.current) return;
    const { bucket, hash, chains, events } = this.current;
    this.current = undefined;
    this.emit({ bucket, chains, events, digest: hash.digest('hex') });
  }
}

/** The root over every bucket, added in key order. */
export class HeadsRoot {
  private readonly hash = createHash('sha256').update('sessionary.audit.heads.v2\n');
  chains = 0;
  events = 0;

  add(b: HeadsBucket): void {
    this.hash.update(`${JSON.stringify(b.bucket)} ${b.chains} ${b.events} ${b.digest}\n`);
    this.chains += b.chains;
    this.events += b.events;
  }

  digest(): string {
    return HEADS_DIGEST_V2 + this.hash.digest('hex');
  }
}

/** The format-2 digest of heads streamed in key order (the verifier's way, and the writer's when it rebuilds every bucket). */
export class HeadsTreeDigest {
  private readonly root = new HeadsRoot();
  private readonly bucketer: HeadsBucketer;

  constructor(onBucket?: (bucket: HeadsBucket) => void) {
    this.bucketer = new HeadsBucketer((b) => {
      this.root.add(b);
      onBucket?.(b);
    });
  }

  add(chainKey: string, position: number, hash: string): void {
    this.bucketer.add(chainKey, position, hash);
  }

  /** Call once, after the last head. */
  finish(): { chains: number; events: number; digest: string } {
    this.bucketer.flush();
    return { chains: this.root.chains, events: this.root.events, digest: this.root.digest() };
  }
}
