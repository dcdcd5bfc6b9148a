import { ConfigurationError } from './configuration-error';

/** What the log says of an error that ends the process: a refused configuration's message, any other error's stack. */
export function describeFatal(error: unknown): string {
  if (error instanceof ConfigurationError) return error.message;
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}
