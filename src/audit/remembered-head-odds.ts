/**
 * Whether an instance should try the one-statement append (APPEND_IF_HEAD) on a chain whose
 * head it remembers. The try pays off when the remembered head is still current: one statement
 * instead of two. When another instance has moved it since, the try writes nothing and the two
 * statements of the locking append follow, so it was a round trip for nothing. Behind a
 * round-robin balancer most remembered heads go stale (with n instances, a user's next event
 * lands on the instance that wrote the last one about once in n), so the instance keeps a
 * moving average of how often a remembered head was current, and tries only while that is at
 * least a half (about where the wasted statements cost what the saved ones save). It learns from
 * its tries, and while it does not try, from the heads the locking append finds: so it notices
 * when the remembered heads become current again (one instance left, or sticky sessions).
 */
export class RememberedHeadOdds {
  /** The moving average of "the remembered head was current"; starts trusting. */
  private currentShare = 1;

  /** `weight`: how much the newest observation counts (1/32: about the last 32 weigh most). */
  constructor(
    private readonly weight = 1 / 32,
    private readonly threshold = 0.5,
  ) {}

  worthTrying(): boolean {
    return this.currentShare >= this.threshold;
  }

  /** One remembered head, found current (the try appended, or the lock found it unchanged) or not. */
  observe(current: boolean): void {
    this.currentShare += this.weight * ((current ? 1 : 0) - this.currentShare);
  }
}
