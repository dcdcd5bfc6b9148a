import { DataSource } from 'typeorm';

export interface SessionRow {
  id: string;
  user_id: string;
  created_at: Date;
  auth_time: Date;
  ended_at: Date | null;
  end_reason: string | null;
  idle_expires_at: Date;
  absolute_expires_at: Date;
  last_seen_at: Date;
  refresh_token_hash: string;
  refresh_expires_at: Date;
  ip_address: string | null;
  user_agent: string | null;
}

export async function sessionRow(db: DataSource, id: string): Promise<SessionRow | undefined> {
  const rows: SessionRow[] = await db.query('SELECT * FROM sessions WHERE id = $1', [id]);
  return rows[0];
}

export interface AuditRow {
  id: string;
  type: string;
  user_id: string | null;
  session_id: string | null;
  ip_address: string | null;
  user_agent: string | null;
  metadata: Record<string, unknown>;
}

export async function auditRows(db: DataSource, where: { userId?: string; sessionId?: string; type?: string }): Promise<AuditRow[]> {
  return db.query(
    `SELECT * FROM audit_events
      WHERE ($1::uuid IS NULL OR user_id = $1::uuid) AND ($2::uuid IS NULL OR session_id = $2::uuid)
        AND ($3::text IS NULL OR type = $3::text)
      ORDER BY seq`,
    [where.userId ?? null, where.sessionId ?? null, where.type ?? null],
  );
}

/**
 * Runs a statement as an intruder with the database's superuser would: with triggers off
 * (session_replication_role = replica, for this transaction only), so that the append-only
 * triggers on audit_events and audit_checkpoints do not stop it. For tests that tamper with the
 * log to see the verifier notice.
 */
export async function tamper<T = unknown>(db: DataSource, text: string, params: unknown[] = []): Promise<T> {
  return db.transaction(async (em) => {
    await em.query('SET LOCAL session_replication_role = replica');
    return (await em.query(text, params)) as T;
  });
}

/**
 * Records the statements of `db` that PostgreSQL refused (by TypeORM's logQueryError, which
 * every failed query reaches), until `stop()`: what the server's own log would show.
 */
export function recordFailedStatements(db: DataSource): { failed: string[]; stop: () => void } {
  const failed: string[] = [];
  const logger = db.logger;
  const original = logger.logQueryError.bind(logger);
  logger.logQueryError = (error, query, parameters, queryRunner) => {
    failed.push(`${typeof error === 'string' ? error : error.message} (${query})`);
    return original(error, query, parameters, queryRunner);
  };
  return { failed, stop: () => (logger.logQueryError = original) };
}

/**
 * Resolves once some backend of this file's database matches `where` (a condition on
 * pg_stat_activity: a lock wait, a pg_sleep), so a test can act while another transaction is
 * held there; fails after 10 s, saying what it waited for.
 */
export async function untilBackend(db: DataSource, where: string, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await db.query(`SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND ${where} LIMIT 1`)).length) {
    if (Date.now() > deadline) throw new Error(`Not seen within 10 s: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
