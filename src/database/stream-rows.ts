import { type Client, type PoolClient, Query, type QueryConfig } from 'pg';

/** Every column as PostgreSQL's text: no Date, no number or JSON conversions. */
const TEXT_TYPES = { getTypeParser: () => (value: string) => value };

/**
 * Runs a query and hands each row (an array of PostgreSQL's text) to `onRow` as it is parsed.
 * A Query object, not a config: pg then keeps no copy of the rows (no callback, a 'row'
 * listener), and a slower reader holds the socket back (TCP), so memory stays bounded without a
 * cursor's round trips. For long reads in one snapshot (the audit verification and base sets).
 */
export function streamRows(client: Client | PoolClient, text: string, values: unknown[], onRow: (row: Array<string | null>) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const query = client.query(new Query({ text, values, rowMode: 'array', types: TEXT_TYPES } as QueryConfig));
    query.on('row', onRow);
    query.on('end', () => resolve());
    query.on('error', reject);
  });
}

/** The pg client under a TypeORM entity manager's query runner (which must be connected). */
export function pgClientOf(em: { queryRunner?: unknown }): PoolClient {
  const client = (em.queryRunner as { databaseConnection?: PoolClient } | undefined)?.databaseConnection;
  if (!client) throw new Error('no connected query runner');
  return client;
}
