import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { access, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { makeDirectoryDurably } from '../common/durable-file';
import { ConfigurationError } from './configuration-error';

/**
 * Paths from configuration that a background job writes to only now and then (a checkpoint
 * every few minutes, a retention archive once a month): checked when the job is set up, so that
 * a path the service cannot write stops the deploy instead of failing, one log line a run, for
 * weeks before anyone reads it. The error says the variable and the system's reason.
 */

/** Opens FILE for appending (creating it, 0600, as the job would) and closes it. */
export async function assertAppendable(variable: string, file: string): Promise<void> {
  try {
    await (await open(file, 'a', 0o600)).close();
  } catch (error) {
    throw new ConfigurationError(`${variable} cannot be appended to: ${(error as Error).message}`);
  }
}

/**
 * Creates DIR as the job would (0700, with its parents, durably), checks that it can be listed and
 * opened (the shipping job reads its pieces back, a durable write syncs the directory), and
 * makes and removes a file in it (a permission bit says nothing of a read-only mount or a full disk).
 */
export async function assertWritableDirectory(variable: string, dir: string): Promise<void> {
  try {
    // Each new directory synced into its parent: the durable writes that follow sync only the
    // directory itself once it exists, so a directory made here with a plain mkdir could be lost
    // by a crash with the first archive in it, while the month's drop was kept (until 0.24.2).
    await makeDirectoryDurably(dir);
    await access(dir, constants.R_OK | constants.W_OK | constants.X_OK);
    // A name of its own each time: a probe left by a crash must not stop the next start.
    const probe = join(dir, `.sessionary-probe-${randomUUID()}`);
    await (await open(probe, 'wx', 0o600)).close();
    await rm(probe);
  } catch (error) {
    throw new ConfigurationError(`${variable} is not a directory the service can write to: ${(error as Error).message}`);
  }
}
