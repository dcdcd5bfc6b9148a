/**
 * What to do when the embedded PostgreSQL does not start, from what it printed last. Deleting
 * the data dir is advised only where it is the way out (a cluster of another major version, a
 * damaged or half-made one), never for a cause that leaves the data whole: a server holding its
 * lock file, the directory's owner or permissions, a full disk, a setting PostgreSQL refuses
 * (until 0.24.1 every failure advised deleting it, so a permissions mistake could end in a lost
 * database).
 */

const OR_ELSEWHERE = 'or set DATABASE_URL to use an existing PostgreSQL server instead';

/** `output`: PostgreSQL's last lines; `dataDir`: its data dir; `osUser`: whom it runs as, when that is not this process's user. */
export function startFailureHint(output: readonly string[], dataDir: string, osUser?: string): string {
  const said = (pattern: RegExp) => output.some((line) => pattern.test(line));
  const startOver = `deleting ${dataDir} starts over with an empty database (its data is lost)`;
  if (said(/lock file ".*postmaster\.pid" already exists|Is another postmaster/)) {
    return (
      `another PostgreSQL server runs on this data dir (the PID its output names): stop it, or the instance of the service or ` +
      `command that started it, or give this one its own DATA_DIR; the data dir itself is intact, do not delete it`
    );
  }
  if (said(/database files are incompatible with server|initialized by PostgreSQL version/)) {
    return (
      `the data dir was made by another PostgreSQL major version: start it with that version to dump its data (pg_dump), or ` +
      `upgrade it (pg_upgrade); ${startOver}, ${OR_ELSEWHERE}`
    );
  }
  if (said(/has wrong ownership|has invalid permissions|Permission denied|could not read permissions of directory/)) {
    const owner = osUser ? `OS user "${osUser}"` : 'the user the service runs as';
    return (
      `check that ${dataDir} and everything in it belong to ${owner}, with mode 0700 (or 0750) on the folder ` +
      `(chown -R, chmod 700); the data itself is intact, do not delete it`
    );
  }
  // Before the disk's: a refused segment says "No space left on device" too.
  if (said(/could not create shared memory segment|could not map anonymous shared memory|could not create semaphores/)) {
    return `the system refused PostgreSQL's shared memory or semaphores (a container's /dev/shm, kernel limits): raise the limit named above`;
  }
  if (said(/No space left on device|could not extend file/)) {
    return `free disk space where ${dataDir} lives (or give it a larger volume), then start again; do not delete the data dir`;
  }
  if (said(/configuration file ".*" contains errors|invalid value for parameter|unrecognized configuration parameter/)) {
    return `correct or remove the setting named above (postgresql.conf or postgresql.auto.conf in ${dataDir}); the data is intact, do not delete it`;
  }
  if (
    said(
      /is not a valid data directory|could not locate a valid checkpoint record|invalid checkpoint record|incorrect checksum in control file|control file contains invalid|could not read file ".*pg_control"|\bPANIC:/,
    )
  ) {
    return `the data dir looks damaged or half made: restore it from a backup if its data matters; otherwise ${startOver}, ` + OR_ELSEWHERE;
  }
  return `read the PostgreSQL output above: it names the cause (the data dir's permissions, free disk space, another server on it), ${OR_ELSEWHERE}`;
}
