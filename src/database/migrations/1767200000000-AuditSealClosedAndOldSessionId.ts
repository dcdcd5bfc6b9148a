import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Two holes a plain DML statement could use, closed by triggers:
 *
 * - `audit_chain_seal` refuses INSERT and UPDATE. It held the bound up to which events written
 *   before the chain existed are sealed (appended to their chains and given their HMACs) at
 *   boot; AuditChain inserted its one row, and the first boot empties it for good. A row put
 *   back by anyone with DML on the service's connection (an injected statement's data-modifying
 *   CTE) had the next boot, or the next CLI command, seal events inserted beside it: forged
 *   events with valid HMACs, and a log that verified as intact.
 * - The sessions' update trigger tells caches of the old id too when a session's id changes
 *   (an operator's statement; the service never does it): only the new id was notified, and an
 *   entry cached under the old one stayed until its TTL while no row had that id.
 *
 * Not a wall against the owner or a superuser (ALTER TABLE ... DISABLE TRIGGER): see AuditAppendOnly.
 */
export class AuditSealClosedAndOldSessionId1767200000000 implements MigrationInterface {
  name = 'AuditSealClosedAndOldSessionId1767200000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE FUNCTION "audit_chain_seal_closed"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'audit_chain_seal only empties: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
      END
      $$`);
    await queryRunner.query(
      `CREATE TRIGGER "audit_chain_seal_closed" BEFORE INSERT OR UPDATE ON "audit_chain_seal" FOR EACH ROW EXECUTE FUNCTION "audit_chain_seal_closed"()`,
    );
    await queryRunner.query(`
      CREATE OR REPLACE FUNCTION "sessionary_notify_session_change"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify('sessionary_sessions', 's:' || (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END)::text);
        IF TG_OP = 'UPDATE' AND NEW.id <> OLD.id THEN
          PERFORM pg_notify('sessionary_sessions', 's:' || OLD.id::text);
        END IF;
        RETURN NULL;
      END $$`);
  }

  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE OR REPLACE FUNCTION "sessionary_notify_session_change"() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_notify('sessionary_sessions', 's:' || (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END)::text);
        RETURN NULL;
      END $$`);
    await queryRunner.query(`DROP TRIGGER "audit_chain_seal_closed" ON "audit_chain_seal"`);
    await queryRunner.query(`DROP FUNCTION "audit_chain_seal_closed"()`);
  }
}
