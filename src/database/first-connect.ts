import type { LoggerService } from '@nestjs/common';
import { setTimeout as sleep } from 'node:timers/promises';
import { type ConnectTarget, connectFailureCode, DatabaseConnectError, describeConnectFailure } from './connect-failure';
import { isDatabaseUnavailable } from './pg-errors';

/** Tries of a boot's first connection while the server is not there yet (one starting beside the service). */
export const FIRST_CONNECT_TRIES = 10;
/** Milliseconds between two of them: the boot gives up after about 27 s, as TypeOrmModule did (a server starting beside the service, as in a compose file, may take that long). */
export const FIRST_CONNECT_PAUSE_MS = 3_000;

/**
 * Runs `connect` (a boot's first connection, and its migrations) again while it fails for want of
 * a server that may yet come (refused, unanswered, starting up), FIRST_CONNECT_TRIES times at
 * most, each failure one warning line that names the server and the reason. What cannot mend by
 * waiting fails at once: a host name that does not resolve, a database or user that does not
 * exist, a wrong password, a schema refused. (Until 0.24.1 TypeOrmModule tried again, 10 times
 * 3 s apart with a stack trace each, a host name that does not resolve too: 27 s before the boot
 * said why it ended.)
 * A failure that describeConnectFailure knows ends as a DatabaseConnectError, whose message is
 * its line (the driver's error is its cause).
 */
export async function firstConnect<T>(
  connect: () => Promise<T>,
  target: ConnectTarget | undefined,
  logger: LoggerService,
  { tries = FIRST_CONNECT_TRIES, pauseMs = FIRST_CONNECT_PAUSE_MS }: { tries?: number; pauseMs?: number } = {},
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await connect();
    } catch (error) {
      const description = describeConnectFailure(error, target);
      if (attempt < tries && isDatabaseUnavailable(error) && connectFailureCode(error) !== 'ENOTFOUND') {
        const reason = description ?? `The database is unavailable: ${error instanceof Error ? error.message : String(error)}`;
        logger.warn(`${reason}; trying again in ${pauseMs / 1000} s (${attempt} of ${tries})`);
        await sleep(pauseMs);
        continue;
      }
      throw description ? new DatabaseConnectError(description, { cause: error }) : error;
    }
  }
}
