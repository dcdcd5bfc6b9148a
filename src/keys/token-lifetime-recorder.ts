import { Logger } from '@nestjs/common';

/** How often a process that issues tokens says its ACCESS_TOKEN_TTL again (see AccessTokenLifetimes). */
export const TOKEN_LIFETIME_REFRESH_SECONDS = 300;

/** How long after a failed refresh the next token tries again (a few tries within the rotation's minute of slack). */
const RETRY_MS = 10_000;

/**
 * Says, for key rotations, that this process issues tokens of its lifetime: before its first
 * token (awaited, so that no rotation can miss it), then again in the background at the first
 * token after TOKEN_LIFETIME_REFRESH_SECONDS, for as long as it issues. So a lifetime counts
 * where tokens are issued, whatever the process (a host's with `scheduledJobs: false` too), and
 * nowhere else (the CLI's shell has a setting, and issues nothing); and it adds no write to a boot
 * (a write there would fail a start on a read-only database).
 */
export class TokenLifetimeRecorder {
  private readonly logger = new Logger(TokenLifetimeRecorder.name);
  /** When the next token must record again (undefined: none recorded yet, so it waits for it). */
  private dueAtMs: number | undefined;
  private recording: Promise<void> | undefined;

  constructor(
    private readonly record: () => Promise<void>,
    /** Milliseconds on a monotonic clock (a test's own). */
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Before issuing a token: a promise only while no record has succeeded yet, undefined otherwise. */
  beforeIssue(): Promise<void> | undefined {
    const now = this.now();
    if (this.dueAtMs !== undefined && now < this.dueAtMs) return undefined;
    const first = this.dueAtMs === undefined;
    if (!this.recording) {
      this.recording = this.record()
        .then(() => void (this.dueAtMs = now + TOKEN_LIFETIME_REFRESH_SECONDS * 1000))
        .finally(() => (this.recording = undefined));
      // Said before, within the slack a rotation allows (a minute past the refresh): a failed
      // refresh is tried again by a token RETRY_MS later, and each failure said once.
      if (!first) {
        this.recording.catch((error: unknown) => {
          this.dueAtMs = now + RETRY_MS;
          this.logger.warn(
            `Could not record the access tokens' lifetime (${error instanceof Error ? error.message : 'unknown error'}); tried again in ${RETRY_MS / 1000} s`,
          );
        });
      }
    }
    return first ? this.recording : undefined;
  }
}
