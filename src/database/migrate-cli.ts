/**
 * `npm run migration:run`: applies the pending migrations as `npm start` does (runMigrationsLocked:
 * under the advisory lock, after checking that the schema is Sessionary's), for a deploy step
 * with MIGRATIONS_RUN=false. The TypeORM CLI's own `migration:run` took neither, so it could
 * run beside an instance booting with the default MIGRATIONS_RUN=true, and two runs of a
 * migration that builds indexes outside a transaction would drop each other's.
 *
 * `npm run migration:revert` (`revert [--confirm <name>]`): reverts the last migration applied,
 * under the same lock, once `--confirm` names it (revertLastMigrationLocked); without it, says
 * which one that is and what its `down` destroys, and exits 2 (TypeORM's CLI reverted at once).
 */
import { Logger } from '@nestjs/common';
import { parseArgs } from 'node:util';
import { loadSettings } from '../config/config';
import type { LogLevelName } from '../config/env.schema';
import { createLogger } from '../config/logger';
import { migrateCliDataSource } from './cli-data-source';
import { connectTargetOf, describeConnectFailure } from './connect-failure';
import { revertLastMigrationLocked, RevertNotConfirmedError, runMigrationsLocked } from './migrate';

const USAGE = 'Usage: node dist/src/database/migrate-cli.js [revert [--confirm <migration name>]]';

class UsageError extends Error {}

function parse(argv: string[]): { revert: false } | { revert: true; confirm: string | undefined } {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { confirm: { type: 'string' } }, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError(`${(error as Error).message}\n${USAGE}`);
  }
  const { positionals, values } = parsed;
  if (positionals.length === 0 && values.confirm === undefined) return { revert: false };
  if (positionals.length === 1 && positionals[0] === 'revert') return { revert: true, confirm: values.confirm };
  throw new UsageError(USAGE);
}

/** `log` when LOG_LEVEL is quieter (warn, error, fatal); debug and verbose as they are. */
function atLeastLog(level: LogLevelName): LogLevelName {
  return level === 'debug' || level === 'verbose' ? level : 'log';
}

async function main(argv: string[]): Promise<void> {
  const command = parse(argv);
  // Made here, not at load: a setting refused is then one line, as every other refusal.
  const settings = loadSettings();
  // The service's logger (LOG_FORMAT and the log's masking), as `npm start` sets it before it
  // migrates: until 0.27.0 these lines went through Nest's default console logger, as text
  // without the masking, whatever LOG_FORMAT said. LOG_LEVEL no quieter than `log`: what the
  // command applied or reverted, and why it refused, are its result, which a service's
  // LOG_LEVEL=warn (or fatal) must not hide. A usage error or a setting refused comes before
  // it, through the default logger, as at the start (src/main.ts).
  Logger.overrideLogger(createLogger({ LOG_FORMAT: settings.LOG_FORMAT, LOG_LEVEL: atLeastLog(settings.LOG_LEVEL) }));
  const dataSource = migrateCliDataSource(settings);
  await dataSource.initialize();
  try {
    if (command.revert) await revertLastMigrationLocked(dataSource, { confirm: command.confirm });
    else await runMigrationsLocked(dataSource);
  } finally {
    await dataSource.destroy();
  }
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (error: unknown) => {
    const refused = error instanceof UsageError || error instanceof RevertNotConfirmedError;
    // A connection that failed: the line the service's start gives (which server, why, what to
    // check; never the password), where it was the driver's bare message.
    const url = process.env.DATABASE_URL;
    const connect = describeConnectFailure(error, url ? connectTargetOf(url) : undefined);
    new Logger('Migrations').error(connect ?? (error instanceof Error ? error.message : String(error)));
    process.exit(refused ? 2 : 1);
  },
);
