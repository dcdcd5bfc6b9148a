import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * 0.20.5 keys the counters' rows by HMAC digests under a key derived from the pepper
 * (src/common/counter-key-digest.ts). The rows written before hold what that hides:
 * `login_throttle` and `login_known_clients` unkeyed SHA-256 of client IPs and identifiers
 * (undone by trying them), `rate_limits` client IPs in plain text. New keys never match them, so
 * they would only wait for the prunes (a known client up to 30 days): deleted here. The counters
 * start again once, and known clients are forgotten until their next successful login. The
 * total registrations' row names no one and keeps counting. A counter being written waits no
 * more than five seconds; the migration then fails and runs again at the next start.
 */
export class CounterKeysKeyed1767100000000 implements MigrationInterface {
  name = 'CounterKeysKeyed1767100000000';

  public async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`SET LOCAL lock_timeout = '5s'`);
    await queryRunner.query(`DELETE FROM "login_known_clients"`);
    await queryRunner.query(`DELETE FROM "login_throttle"`);
    await queryRunner.query(`DELETE FROM "rate_limits" WHERE "key" <> 'register-total' AND "key" !~ '^[0-9a-f]{64}$'`);
  }

  public async down(): Promise<void> {
    // Counters only: the old keys cannot be made again from the digests, nor need to be.
  }
}
