import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DataSource, EntityManager } from 'typeorm';
import type { AuditService } from '../audit/audit.service';
import { SessionMaintenanceService } from './session-maintenance.service';
import type { SessionsService } from './sessions.service';

/**
 * The end-all loop's own logic, over a stand-in database: each batch's selection answers the
 * users given for it in turn, and each user's end ends what `endedBy` says.
 */
function endAllOver(batches: string[][], endedBy: Record<string, string[]>) {
  const selections = [...batches];
  const ends: string[] = [];
  const em = {
    queryRunner: {
      query: async (text: string) => {
        if (/SELECT now\(\)/.test(text)) return { records: [{ now: new Date() }], affected: undefined };
        const users = selections.shift() ?? [];
        return { records: users.map((user_id) => ({ user_id })), affected: undefined };
      },
    },
  } as unknown as EntityManager;
  const dataSource = { manager: em, transaction: (work: (em: EntityManager) => Promise<unknown>) => work(em) } as unknown as DataSource;
  const sessions = {
    endSessions: async ({ userId }: { userId: string }) => {
      ends.push(userId);
      return endedBy[userId] ?? [];
    },
  } as unknown as SessionsService;
  const service = new SessionMaintenanceService(dataSource, {} as AuditService, sessions);
  return { ends, run: () => service.endAllSessions({ reason: 'revoked_by_admin', event: 'SESSION_REVOKED' }, 1) };
}

describe('SessionMaintenanceService.endAllSessions', () => {
  it('goes on past a batch that ended nothing (its sessions expired or were ended meanwhile), and stops when none is left to select', async () => {
    // The first batch's user: its one session passed its idle deadline (or was ended by
    // another request) between the selection and its UPDATE. Until 0.28.0 the loop stopped
    // there, with the second user's session still active.
    const { ends, run } = endAllOver([['expired-meanwhile'], ['active']], { active: ['s2'] });
    assert.equal(await run(), 1);
    assert.deepEqual(ends, ['expired-meanwhile', 'active']);
  });
});
