import type { LoggerService } from '@nestjs/common';
import type { DataSource } from 'typeorm';
import { isDatabaseUnavailable } from './pg-errors';

/**
 * Warns when the database lower-cases ASCII letters only, as it does with LC_CTYPE `C` (the
 * default of some operators' clusters, CloudNativePG's among them). Emails are unique and found
 * at login by PostgreSQL's lower(), so there `BÜCHER@example.test` and `bücher@example.test`
 * are two accounts, and a login must spell such letters as they were registered. Not refused:
 * the service works, and moving a database to another locale is the operator's step. Judged by
 * what lower() does, not by the locale's name (an ICU database folds whatever its LC_CTYPE
 * says). A check that fails for another reason than an outage stops nothing: it only warns.
 */
export async function warnIfCaseFoldingIsAsciiOnly(dataSource: DataSource, logger: LoggerService): Promise<void> {
  let row: { folds: boolean; ctype: string };
  try {
    // pg_database, not current_setting('lc_ctype'): PostgreSQL 16 removed that setting.
    [row] = (await dataSource.query(
      `SELECT lower('ÄÉÖÜ') = 'äéöü' AS folds, (SELECT datctype FROM pg_database WHERE datname = current_database()) AS ctype`,
    )) as Array<{ folds: boolean; ctype: string }>;
  } catch (error) {
    if (isDatabaseUnavailable(error)) throw error;
    logger.warn(`Could not check how the database lower-cases letters: ${error instanceof Error ? error.message : String(error)}`);
    return;
  }
  if (row.folds) return;
  logger.warn(
    `The database lower-cases ASCII letters only (LC_CTYPE ${row.ctype}): email addresses that differ in the case of other letters ` +
      `(BÜCHER@example.test, bücher@example.test) can register as two accounts, and logins must match such letters' case. ` +
      `Create the database with a UTF-8 locale (e.g. LC_CTYPE 'C.UTF-8') or the ICU provider`,
  );
}
