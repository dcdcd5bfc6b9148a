/**
 * A background job's record for /metrics: its runs that failed, and when one last succeeded.
 * Its log lines say why a run failed; these let an alert see that one did, and a job that
 * fails every run apart from one that has nothing to do (neither moves its work counters).
 */
export class JobHealth {
  failures = 0;
  lastSucceededAt: Date | null = null;

  succeeded(): void {
    this.lastSucceededAt = new Date();
  }

  failed(): void {
    this.failures++;
  }
}
