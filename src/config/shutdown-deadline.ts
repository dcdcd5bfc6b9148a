import { Logger } from '@nestjs/common';
import { SHUTDOWN_SIGNALS } from '../common/shutdown-signals';

/**
 * Bounds the graceful shutdown (SHUTDOWN_TIMEOUT): Nest's shutdown hooks finish the requests
 * under way, the jobs' batches and the last writes, each waiting on the database or on a
 * client, and nothing stops a step that waits forever (a long export streaming, a lock held by
 * another session). Past the deadline the process logs that it did not finish and exits with
 * 1; the embedded PostgreSQL is stopped by its own exit handler (embedded-postgres.ts).
 *
 * `once` per signal: after the hooks Nest raises the signal again for the default action
 * (the process ends by it), which a listener still registered for it would swallow.
 */
export function armShutdownDeadline(seconds: number): void {
  if (seconds === 0) return;
  const onSignal = (signal: NodeJS.Signals): void => {
    for (const other of SHUTDOWN_SIGNALS) process.removeListener(other, onSignal);
    const timer = setTimeout(() => {
      new Logger('Shutdown').fatal(`The shutdown on ${signal} did not finish within ${seconds} s (SHUTDOWN_TIMEOUT): exiting with 1`);
      process.exit(1);
    }, seconds * 1000);
    // Never what keeps a process alive that has finished its shutdown.
    timer.unref();
  };
  for (const signal of SHUTDOWN_SIGNALS) process.once(signal, onSignal);
}
