import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * audit_events and audit_checkpoints refuse UPDATE and DELETE, whoever runs them: the service
 * never changes or deletes an event or a checkpoint (retention drops whole months, which fires
 * no row trigger), so a statement that tries is a bug, or someone using the service's
 * connection, e.g. through SQL injection (a single statement can carry a DELETE in a CTE, but
 * not the DDL that would turn a trigger off). The one UPDATE the service makes is sealing: an
 * event written before the chain existed gets its chain fields, and nothing else of it changes.
 *
 * Not a wall against the database's owner or a superuser: ALTER TABLE ... DISABLE TRIGGER, or
 * session_replication_role = replica, turns it off. Against them the hash chain and the
 * checkpoints kept outside the database are what tell (see the README's section "The audit
 * chain: how it works and what it does not protect against").
 */
export class AuditAppendOnly1766100000000 implements MigrationInterface {
  name = 'AuditAppendOnly1766100000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE FUNCTION "audit_events_append_only"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        -- Sealing: an unsealed event gets its chain fields, and only those.
        IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND OLD.chain_key IS NULL
           AND (NEW.seq, NEW.id, NEW.type, NEW.user_id, NEW.session_id, NEW.ip_address, NEW.user_agent, NEW.metadata, NEW.created_at)
               IS NOT DISTINCT FROM
               (OLD.seq, OLD.id, OLD.type, OLD.user_id, OLD.session_id, OLD.ip_address, OLD.user_agent, OLD.metadata, OLD.created_at)
        THEN
          RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit_events is append-only: % of event % refused', TG_OP, OLD.id
          USING ERRCODE = 'insufficient_privilege';
      END
      $$`);
    await queryRunner.query(`
      CREATE FUNCTION "audit_checkpoints_append_only"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'audit_checkpoints is append-only: % of checkpoint % refused', TG_OP, OLD.id
          USING ERRCODE = 'insufficient_privilege';
      END
      $$`);
    // On the partitioned table: PostgreSQL gives every partition, present and future, a clone.
    await queryRunner.query(
      `CREATE TRIGGER "audit_events_append_only" BEFORE UPDATE OR DELETE ON "audit_events" FOR EACH ROW EXECUTE FUNCTION "audit_events_append_only"()`,
    );
    await queryRunner.query(
      `CREATE TRIGGER "audit_checkpoints_append_only" BEFORE UPDATE OR DELETE ON "audit_checkpoints" FOR EACH ROW EXECUTE FUNCTION "audit_checkpoints_append_only"()`,
    );
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TRIGGER "audit_checkpoints_append_only" ON "audit_checkpoints"`);
    await queryRunner.query(`DROP TRIGGER "audit_events_append_only" ON "audit_events"`);
    await queryRunner.query(`DROP FUNCTION "audit_checkpoints_append_only"()`);
    await queryRunner.query(`DROP FUNCTION "audit_events_append_only"()`);
  }
}
