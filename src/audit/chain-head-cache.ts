/** A chain's head as this instance last wrote it. */
export interface KnownHead {
  position: number;
  hash: string;
  /** The newest event's time, in microseconds since the epoch. */
  atMicros: number;
}

/**
 * The heads of the chains this instance wrote last, so that its next event on such a chain
 * can be appended in one statement that checks the head is still the same (AuditService).
 * Only a hint: a head that another instance moved, or that a rolled-back transaction never
 * stored, fails that check and the writer takes the head's lock instead. Bounded: the least
 * recently written chains are forgotten first.
 */
export class ChainHeadCache {
  private readonly heads = new Map<string, KnownHead>();

  constructor(private readonly max: number) {}

  get(chainKey: string): KnownHead | undefined {
    return this.heads.get(chainKey);
  }

  set(chainKey: string, head: KnownHead): void {
    // Delete first so that the key moves to the end of the Map's insertion order.
    this.heads.delete(chainKey);
    this.heads.set(chainKey, head);
    if (this.heads.size > this.max) this.heads.delete(this.heads.keys().next().value!);
  }

  get size(): number {
    return this.heads.size;
  }
}
