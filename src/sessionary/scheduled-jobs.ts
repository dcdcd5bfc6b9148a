/**
 * Whether this process runs Sessionary's scheduled jobs: the session cleanup, the audit
 * checkpoints, the audit partitions' maintenance (months ahead, retention, ordering), the
 * signing-key rotation and the prunes of the rate-limit and login-failure counters.
 *
 * True for the service. False for a process that boots the modules to do one thing and exit
 * (the CLI; a host's own scripts): such a process must not claim a cleanup tick, write a
 * checkpoint, or drop or archive a month with whatever settings its shell happens to have
 * (until 0.15.1 the CLI did, for as long as a command ran). Without the jobs it still seals
 * events from before the chain and creates the months ahead, which its own events need.
 */
export const SCHEDULED_JOBS = Symbol('SESSIONARY_SCHEDULED_JOBS');

/** How a process runs the Sessionary module, beside its settings. */
export interface SessionaryProcessOptions {
  /** Run the scheduled jobs (default true); false for one-shot processes. */
  scheduledJobs?: boolean;
}
