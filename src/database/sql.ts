import { EntityManager } from 'typeorm';

export interface SqlResult<T> {
  rows: T[];
  count: number;
}

export interface SqlOptions {
  /**
   * Prepares the statement once per connection under this name (unique per statement text),
   * so that PostgreSQL parses and plans it once instead of at every call: for statements on
   * a hot path whose parse and plan cost more than their execution (a CTE of several parts
   * takes about 0.4 ms to parse and plan, and 0.2 ms to run).
   */
  prepareAs?: string;
}

/**
 * Runs one SQL statement and returns its rows and affected count in one shape.
 * (EntityManager.query returns `[rows, count]` for UPDATE/DELETE ... RETURNING but plain rows
 * for SELECT and INSERT; the structured result of the query runner does not vary.)
 */
export async function sql<T>(em: EntityManager, text: string, params: unknown[] = [], options: SqlOptions = {}): Promise<SqlResult<T>> {
  const runner = em.queryRunner ?? em.connection.createQueryRunner();
  try {
    // TypeORM hands the query to pg's Client#query as it is, and pg takes a { name, text }
    // config there: so a named statement keeps TypeORM's connection handling and its
    // QueryFailedError, which the error filter and the outage monitor rely on.
    const query = options.prepareAs ? ({ name: options.prepareAs, text } as unknown as string) : text;
    const result = await runner.query(query, params, true);
    const rows = (result.records ?? []) as T[];
    return { rows, count: result.affected ?? rows.length };
  } finally {
    if (!em.queryRunner) await runner.release();
  }
}

/** The rows of one statement (for callers that pass a reader of rows along, like a cursor). */
export async function rowsOf<T>(em: EntityManager, text: string, params: unknown[] = [], options: SqlOptions = {}): Promise<T[]> {
  return (await sql<T>(em, text, params, options)).rows;
}
