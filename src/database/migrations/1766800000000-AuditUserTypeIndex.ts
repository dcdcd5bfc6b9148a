import { MigrationInterface, QueryRunner } from 'typeorm';
import { createAuditIndexMonthByMonth } from '../audit-index-build';

const INDEX = 'IDX_audit_events_user_type_partial';

/**
 * A user's events of one type, by time, for every type but the two that come in thousands per
 * user: TOKEN_REFRESH (each refresh) and SESSION_EXPIRED (each session the cleanup ends). A
 * user's page of one type went by the user's index of every type, (user_id, created_at, seq,
 * type), testing the type on each entry: for a user with 400k refreshes over a year, a page
 * of PASSWORD_CHANGED read all of them, 3,350 pages, 11–18 ms warm and 65–260 ms cold (one
 * such user beside 2M other events); by this index it reads the few it needs, 0.4 ms. Neither
 * of the two frequent types writes to it, so a refresh and the cleanup pay nothing for it; for
 * either of them a user's events of that type are the dense ones, and the user's index finds
 * a page of them among the first entries it reads. The page names its type in its text, so
 * that PostgreSQL's plan can match the predicate (AuditService.list).
 *
 * Built month by month without holding audit writes back (createAuditIndexMonthByMonth), so
 * outside a transaction.
 */
export class AuditUserTypeIndex1766800000000 implements MigrationInterface {
  name = 'AuditUserTypeIndex1766800000000';
  transaction = false;

  public async up(queryRunner: QueryRunner): Promise<void> {
    await createAuditIndexMonthByMonth(
      queryRunner,
      INDEX,
      'user_type_partial',
      `("user_id", "type", "created_at", "seq") WHERE "type" NOT IN ('TOKEN_REFRESH', 'SESSION_EXPIRED')`,
    );
  }

  /** In a transaction (TypeORM reverts that way), so under the lock. */
  public async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP INDEX IF EXISTS "${INDEX}"`);
  }
}
