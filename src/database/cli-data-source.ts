import { DataSource, type DataSourceOptions } from 'typeorm';
import { loadSettings } from '../config/config';
import type { Env } from '../config/env.schema';
import { cliDataSourceOptions } from './data-source.options';
import { TypeOrmNestLogger } from './typeorm-logger';

/**
 * The data source of the migration commands (`npm run migration:*`, the TypeORM CLI): from
 * DATABASE_URL and the other settings, never the secrets, which no migration uses. Until 0.23.0
 * it loaded the whole configuration, so a deploy step in production needed every secret to
 * migrate (and in development wrote DATA_DIR's secrets file), and refused without them by an
 * uncaught exception at load.
 */
export function cliDataSource(settings: Env = loadSettings()): DataSource {
  return new DataSource(cliOptions(settings));
}

function cliOptions(settings: Env): DataSourceOptions {
  if (!settings.DATABASE_URL) {
    throw new Error('The migration commands need DATABASE_URL (the embedded default runs only inside `npm start`).');
  }
  return cliDataSourceOptions(settings.DATABASE_URL);
}

/**
 * `npm run migration:*`'s data source (src/database/migrate-cli.ts): TypeORM's lines through
 * Nest's logger, as at boot, where the TypeORM CLI's data source keeps TypeORM's own console
 * logger, whose kinds that CLI sets.
 */
export function migrateCliDataSource(settings: Env): DataSource {
  return new DataSource({ ...cliOptions(settings), logger: new TypeOrmNestLogger(['warn', 'migration']) });
}
