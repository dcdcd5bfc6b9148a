import { join, resolve } from 'node:path';
import { NodeEnv } from '../config/env.schema';

/**
 * What to say when a production process runs on the embedded PostgreSQL (no DATABASE_URL): a
 * complete deployment for one instance, but its data is only as durable as DATA_DIR, and in a
 * container with an anonymous volume an upgrade (a new container) starts from an empty
 * database. Said at boot, once: the start line alone named it in passing.
 */
export function embeddedInProductionWarning(env: { NODE_ENV: NodeEnv; DATA_DIR: string }): string | undefined {
  if (env.NODE_ENV !== NodeEnv.Production) return undefined;
  return (
    `NODE_ENV=production on the embedded PostgreSQL (DATABASE_URL is not set): its data is in ${resolve(join(env.DATA_DIR, 'pg'))}, ` +
    `which must outlive this process and its container (Docker: a named volume, -v sessionary-data:/app/.data), and one instance ` +
    `at a time can use it. Set DATABASE_URL to run on a PostgreSQL server of your own`
  );
}
