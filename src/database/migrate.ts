import { Logger } from '@nestjs/common';
import { DataSource } from 'typeorm';

// Any fixed 64-bit number works; this one spells "sessmigr" in ASCII.
const MIGRATION_LOCK_KEY = '8315173848271906162';

/**
 * Applies pending migrations while holding a PostgreSQL advisory lock, so that instances
 * booting together run them once: the others wait, then find nothing pending.
 */
export async function runMigrationsLocked(dataSource: DataSource): Promise<void> {
  const logger = new Logger('Migrations');
  const runner = dataSource.createQueryRunner();
  await runner.connect();
  try {
    await runner.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    try {
      const applied = await dataSource.runMigrations({ transaction: 'each' });
      if (applied.length) logger.log(`Applied ${applied.length} migration(s): ${applied.map((m) => m.name).join(', ')}`);
    } finally {
      await runner.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
    }
  } finally {
    await runner.release();
  }
}
