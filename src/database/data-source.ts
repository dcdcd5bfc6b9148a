// Entry point for the TypeORM CLI (`npm run migration:*`), built to dist/ first.
import { DataSource } from 'typeorm';
import { loadConfig } from '../config/config';
import { cliDataSourceOptions } from './data-source.options';

const config = loadConfig();
if (!config.DATABASE_URL) {
  throw new Error('The TypeORM CLI needs DATABASE_URL (the embedded default runs only inside `npm start`).');
}
export default new DataSource(cliDataSourceOptions(config.DATABASE_URL));
