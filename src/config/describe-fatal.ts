import { ConfigurationError } from './configuration-error';
import { DatabaseConnectError, describeConnectFailure } from '../database/connect-failure';

/**
 * What the log says of an error that ends the process: a refused configuration's message, a
 * failed first connection to PostgreSQL in one line (which server, why, what to check; never a
 * password), any other error's stack.
 */
export function describeFatal(error: unknown): string {
  if (error instanceof ConfigurationError || error instanceof DatabaseConnectError) return error.message;
  // One that did not come through the data source's first connection (firstConnect), which
  // names DATABASE_URL's host and port: the socket's address, when the error has one.
  const connectFailure = describeConnectFailure(error);
  if (connectFailure) return connectFailure;
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}
