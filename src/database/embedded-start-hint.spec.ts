import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { startFailureHint } from './embedded-start-hint';

const DATA_DIR = '/srv/app/.data/pg';
// PostgreSQL 17's lines (log_line_prefix '%m [%p] '), as the package hands them over.
const said = (...lines: string[]) => lines.map((line) => `2026-12-07 08:00:00.000 UTC [4242] ${line}`);

describe('startFailureHint', () => {
  for (const [cause, output, advice] of [
    [
      'another server holding the lock file',
      said('FATAL:  lock file "postmaster.pid" already exists', `HINT:  Is another postmaster (PID 4100) running in data directory "${DATA_DIR}"?`),
      /^another PostgreSQL server runs on this data dir .*give this one its own DATA_DIR; the data dir itself is intact, do not delete it$/,
    ],
    [
      "the data dir's permissions",
      said(`FATAL:  data directory "${DATA_DIR}" has invalid permissions`, 'DETAIL:  Permissions should be u=rwx (0700) or u=rwx,g=rx (0750).'),
      /^check that \/srv\/app\/\.data\/pg and everything in it belong to the user the service runs as, with mode 0700 .*do not delete it$/,
    ],
    ["the data dir's owner", said(`FATAL:  data directory "${DATA_DIR}" has wrong ownership`), /belong to OS user "postgres".*do not delete it$/],
    [
      'a full disk',
      said('PANIC:  could not write to file "pg_wal/xlogtemp.4242": No space left on device'),
      /^free disk space .*do not delete the data dir$/,
    ],
    [
      'a setting it refuses',
      said(
        'LOG:  invalid value for parameter "shared_buffers": "plenty"',
        `FATAL:  configuration file "${DATA_DIR}/postgresql.auto.conf" contains errors`,
      ),
      /^correct or remove the setting named above .*do not delete it$/,
    ],
    [
      'shared memory refused',
      said('FATAL:  could not create shared memory segment: No space left on device'),
      /^the system refused PostgreSQL's shared memory/,
    ],
    ['a cause it cannot tell', said('FATAL:  something new went wrong'), /^read the PostgreSQL output above: it names the cause/],
  ] as const) {
    it(`for ${cause}, says what to check and never to delete the data dir`, () => {
      const hint = startFailureHint(output, DATA_DIR, cause === "the data dir's owner" ? 'postgres' : undefined);
      assert.match(hint, advice);
      assert.doesNotMatch(hint, /deleting \/|delete \//);
    });
  }

  for (const [cause, output] of [
    [
      'a cluster of another major version',
      said(
        'FATAL:  database files are incompatible with server',
        'DETAIL:  The data directory was initialized by PostgreSQL version 16, which is not compatible with this version 17.10.',
      ),
    ],
    ['a half-made cluster', said(`FATAL:  "${DATA_DIR}" is not a valid data directory`, `DETAIL:  File "${DATA_DIR}/PG_VERSION" is missing.`)],
    ['a damaged one', said('LOG:  invalid checkpoint record', 'PANIC:  could not locate a valid checkpoint record at 0/1000028')],
  ] as const) {
    it(`for ${cause}, names deleting the data dir as the way to start over, after what keeps the data`, () => {
      const hint = startFailureHint(output, DATA_DIR);
      assert.match(hint, /deleting \/srv\/app\/\.data\/pg starts over with an empty database \(its data is lost\)/);
      assert.match(hint, /pg_upgrade|restore it from a backup/);
    });
  }
});
