// Entry point for the TypeORM CLI (`npm run migration:*`), built to dist/ first.
import { cliDataSource } from './cli-data-source';

export default cliDataSource();
