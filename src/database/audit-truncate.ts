/** The statement trigger by which audit_events, each of its months, and audit_checkpoints refuse TRUNCATE (migration AuditTruncateRefused). */
export const AUDIT_NO_TRUNCATE_TRIGGER = 'audit_no_truncate';

/**
 * The statement that gives `table` (a month of audit_events, made after the migration) the
 * trigger, unless it has it already: a month a run made ahead keeps its own (PostgreSQL 13 has
 * no CREATE OR REPLACE TRIGGER). `table` is one of ours, never a caller's text.
 */
export function refuseTruncateSql(table: string): string {
  // duplicate_object: made meanwhile by another (the migration and a partitions job at once).
  return `DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = '"${table}"'::regclass AND tgname = '${AUDIT_NO_TRUNCATE_TRIGGER}') THEN
      CREATE TRIGGER "${AUDIT_NO_TRUNCATE_TRIGGER}" BEFORE TRUNCATE ON "${table}" FOR EACH STATEMENT EXECUTE FUNCTION "audit_refuse_truncate"();
    END IF;
  EXCEPTION WHEN duplicate_object THEN NULL;
  END $$`;
}
