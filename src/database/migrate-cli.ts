/**
 * `npm run migration:run`: applies the pending migrations as `npm start` does (runMigrationsLocked:
 * under the advisory lock, after checking that the schema is Sessionary's), for a deploy step
 * with MIGRATIONS_RUN=false. The TypeORM CLI's own `migration:run` took neither, so it could
 * run beside an instance booting with the default MIGRATIONS_RUN=true, and two runs of a
 * migration that builds indexes outside a transaction would drop each other's.
 */
import { Logger } from '@nestjs/common';
import dataSource from './data-source';
import { runMigrationsLocked } from './migrate';

async function main(): Promise<void> {
  await dataSource.initialize();
  try {
    await runMigrationsLocked(dataSource);
  } finally {
    await dataSource.destroy();
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    new Logger('Migrations').error(error instanceof Error ? error.message : String(error));
    process.exit(1);
  },
);
