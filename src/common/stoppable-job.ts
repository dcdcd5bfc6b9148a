/**
 * One run at a time of a scheduled job that works in batches, and a way to stop it at shutdown.
 *
 * A call while a run is under way shares that run instead of starting another (a cron tick
 * that comes while the last one still works, or a test calling it directly). `stop()` aborts
 * the signal the runs get, so a run starts no further batch, and resolves once the run under
 * way has finished its batch (or failed): call it from `beforeApplicationShutdown`, before the
 * database closes. Runs started after `stop()` get the aborted signal and should return at once.
 */
export class StoppableJob<T> {
  private readonly stopping = new AbortController();
  private current: Promise<T> | undefined;

  run(work: (stop: AbortSignal) => Promise<T>): Promise<T> {
    // Through an async function, so a `work` that throws before its first await rejects the
    // promise like any other failure instead of throwing at the caller.
    this.current ??= (async () => work(this.stopping.signal))().finally(() => (this.current = undefined));
    return this.current;
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    // The run's own caller hears of its failure; shutdown goes on either way.
    await this.current?.catch(() => undefined);
  }
}
