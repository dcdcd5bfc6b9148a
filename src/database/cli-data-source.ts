import { DataSource } from 'typeorm';
import { loadSettings } from '../config/config';
import { cliDataSourceOptions } from './data-source.options';

/**
 * The data source of the migration commands (`npm run migration:*`, the TypeORM CLI): from
 * DATABASE_URL and the other settings, never the secrets, which no migration uses. Until 0.23.0
 * it loaded the whole configuration, so a deploy step in production needed every secret to
 * migrate (and in development wrote DATA_DIR's secrets file), and refused without them by an
 * uncaught exception at load.
 */
export function cliDataSource(): DataSource {
  const settings = loadSettings();
  if (!settings.DATABASE_URL) {
    throw new Error('The migration commands need DATABASE_URL (the embedded default runs only inside `npm start`).');
  }
  return new DataSource(cliDataSourceOptions(settings.DATABASE_URL));
}
