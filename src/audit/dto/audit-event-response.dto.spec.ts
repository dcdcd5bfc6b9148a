import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AuditEventEntity } from '../audit-event.entity';
import { AuditEventResponseDto } from './audit-event-response.dto';

const USER = '00000000-0000-4000-8000-000000000001';
const ADMIN = '00000000-0000-4000-8000-000000000002';
const event = (metadata: AuditEventEntity['metadata']) =>
  ({
    id: '00000000-0000-4000-8000-0000000000aa',
    type: 'SESSION_REVOKED',
    userId: USER,
    sessionId: '00000000-0000-4000-8000-0000000000bb',
    ipAddress: '192.0.2.10',
    userAgent: 'admin-console/2.0',
    createdAt: new Date('2026-12-06T00:00:00Z'),
    metadata,
  }) as AuditEventEntity;

describe('AuditEventResponseDto.forOwner', () => {
  it("leaves out another admin's address, browser and session, keeping the admin's id", () => {
    const seen = AuditEventResponseDto.forOwner(event({ reason: 'revoked_by_admin', adminId: ADMIN, bySessionId: 'admin-session' }));
    assert.deepEqual([seen.ipAddress, seen.userAgent, seen.metadata], [null, null, { reason: 'revoked_by_admin', adminId: ADMIN }]);
  });

  it("shows an admin's own events as recorded, and events no admin made", () => {
    const own = AuditEventResponseDto.forOwner(event({ reason: 'revoked_by_admin', adminId: USER, bySessionId: 'own-session' }));
    assert.deepEqual([own.ipAddress, own.userAgent, own.metadata.bySessionId], ['192.0.2.10', 'admin-console/2.0', 'own-session']);
    const plain = AuditEventResponseDto.forOwner(event({ reason: 'revoked', bySessionId: 'own-session' }));
    assert.deepEqual([plain.ipAddress, plain.metadata.bySessionId], ['192.0.2.10', 'own-session']);
  });

  it("leaves out the server's bcrypt costs of a LOGIN that re-hashed the password, and changes nothing else", () => {
    const login = event({ method: 'email', bcryptCostFrom: 10, bcryptCostTo: 12 });
    const seen = AuditEventResponseDto.forOwner(login);
    assert.deepEqual(seen.metadata, { method: 'email' });
    assert.deepEqual([seen.ipAddress, seen.userAgent], ['192.0.2.10', 'admin-console/2.0']);
    assert.deepEqual(AuditEventResponseDto.from(login).metadata, { method: 'email', bcryptCostFrom: 10, bcryptCostTo: 12 }, 'admins still read them');
  });
});
