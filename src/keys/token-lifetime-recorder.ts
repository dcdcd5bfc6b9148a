import { Logger } from '@nestjs/common';

/** How often a process that issues tokens says its ACCESS_TOKEN_TTL again (see AccessTokenLifetimes). */
export const TOKEN_LIFETIME_REFRESH_SECONDS = 300;

/**
 * Says, for key rotations, that this process issues tokens of its lifetime: before its first
 * token (awaited, so that no rotation can miss it), then again in the background at the first
 * token after TOKEN_LIFETIME_REFRESH_SECONDS, for as long as it issues. So a lifetime counts
 * where tokens are issued, whatever the process (a host's with `scheduledJobs: false` too), and
 * nowhere else (the CLI's shell has a setting, and issues nothing); and a boot writes nothing
 * (a read-only database still lets an instance start and say it is not ready).
 */
export class TokenLifetimeRecorder {
  private readonly logger = new Logger(TokenLifetimeRecorder.name);
  private recordedAtMs: number | undefined;
  private recording: Promise<void> | undefined;

  constructor(private readonly record: () => Promise<void>) {}

  /** Before issuing a token: a promise only the first time (or while no record has succeeded yet), undefined otherwise. */
  beforeIssue(): Promise<void> | undefined {
    const now = performance.now();
    if (this.recordedAtMs !== undefined && now - this.recordedAtMs < TOKEN_LIFETIME_REFRESH_SECONDS * 1000) return undefined;
    const first = this.recordedAtMs === undefined;
    this.recording ??= this.record()
      .then(() => void (this.recordedAtMs = now))
      .finally(() => (this.recording = undefined));
    if (first) return this.recording;
    // Said before, within the slack a rotation allows (a minute past the refresh): a failure here is the next token's to retry.
    this.recording.catch((error: unknown) =>
      this.logger.warn(
        `Could not record the access tokens' lifetime (${error instanceof Error ? error.message : 'unknown error'}); retried at the next token`,
      ),
    );
    return undefined;
  }
}
