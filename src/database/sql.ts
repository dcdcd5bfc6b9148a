import { EntityManager } from 'typeorm';

export interface SqlResult<T> {
  rows: T[];
  count: number;
}

/**
 * Runs one SQL statement and returns its rows and affected count in one shape.
 * (EntityManager.query returns `[rows, count]` for UPDATE/DELETE ... RETURNING but plain rows
 * for SELECT and INSERT; the structured result of the query runner does not vary.)
 */
export async function sql<T>(em: EntityManager, text: string, params: unknown[] = []): Promise<SqlResult<T>> {
  const runner = em.queryRunner ?? em.connection.createQueryRunner();
  try {
    const result = await runner.query(text, params, true);
    const rows = (result.records ?? []) as T[];
    return { rows, count: result.affected ?? rows.length };
  } finally {
    if (!em.queryRunner) await runner.release();
  }
}

/** The rows of one statement (for callers that pass a reader of rows along, like a cursor). */
export async function rowsOf<T>(em: EntityManager, text: string, params: unknown[] = []): Promise<T[]> {
  return (await sql<T>(em, text, params)).rows;
}
