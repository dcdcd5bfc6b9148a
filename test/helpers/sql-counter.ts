import { Client } from 'pg';

/**
 * Counts the statements the app's pool sends (connections named `sessionary`; the listening
 * connection is named otherwise and not counted), by wrapping pg's Client#query in this
 * process. The e2e apps run in the test's process, so this sees every query they make.
 */
export class SqlCounter {
  private count = 0;
  private readonly original = Client.prototype.query;

  start(): this {
    const original = this.original;
    // The patched query needs the client as `this` and the counter beside it.
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const counter = this;
    Client.prototype.query = function (this: Client & { connectionParameters?: { application_name?: string } }, ...args: unknown[]) {
      if (this.connectionParameters?.application_name === 'sessionary') counter.count++;
      return (original as (...a: unknown[]) => unknown).apply(this, args);
    } as typeof Client.prototype.query;
    return this;
  }

  stop(): void {
    Client.prototype.query = this.original;
  }

  /** Statements sent while `fn` ran. */
  async during(fn: () => Promise<unknown>): Promise<number> {
    const before = this.count;
    await fn();
    return this.count - before;
  }
}
