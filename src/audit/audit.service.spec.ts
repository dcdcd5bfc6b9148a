import 'reflect-metadata';
import { describe, it, beforeEach, mock } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { BadRequestException } from '@nestjs/common';
import type { DataSource, EntityManager } from 'typeorm';
import { AuditEventEntity } from './audit-event.entity';
import { AuditService, decodeCursor, encodeCursor } from './audit.service';

const MAX_SEQ = '9223372036854775807';
const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64url');

function isCursorError(e: unknown): boolean {
  assert.ok(e instanceof BadRequestException, `expected BadRequestException, got ${String(e)}`);
  assert.equal(e.getStatus(), 400);
  assert.deepEqual((e.getResponse() as { message: unknown }).message, ['cursor is invalid']);
  return true;
}

describe('encodeCursor / decodeCursor', () => {
  for (const seq of ['1', '42', '1000000', MAX_SEQ]) {
    it(`round-trips seq ${seq}`, () => {
      const cursor = encodeCursor(seq);
      assert.match(cursor, /^[A-Za-z0-9_-]+$/);
      assert.equal(decodeCursor(cursor), seq);
    });
  }

  it('is opaque: the cursor is not the bare number', () => {
    assert.notEqual(encodeCursor('42'), '42');
    assert.equal(encodeCursor('42'), b64('a1.42'));
  });

  for (const [name, cursor] of [
    ['garbage', 'not a cursor!'],
    ['an empty string', ''],
    ['a bare number', '42'],
    ["base64url of 'a1.0'", b64('a1.0')],
    ["base64url of 'a1.-1'", b64('a1.-1')],
    ["base64url of 'a1.abc'", b64('a1.abc')],
    ["base64url of 'a1.01' (leading zero)", b64('a1.01')],
    ["base64url of 'a1.1 ' (trailing space)", b64('a1.1 ')],
    ["base64url of 'a2.5' (other version)", b64('a2.5')],
    ['a seq of 2^63 (above bigint)', b64('a1.9223372036854775808')],
    ['a 20-digit seq', b64('a1.10000000000000000000')],
    ['an overlong string', 'A'.repeat(65)],
    ['a valid cursor followed by padding to 65 characters', encodeCursor('1').padEnd(65, 'A')],
    ['standard base64 with padding', Buffer.from('a1.1').toString('base64')],
  ] as const) {
    it(`throws 400 for ${name}`, () => {
      assert.throws(() => decodeCursor(cursor), isCursorError);
    });
  }
});

describe('AuditService.record', () => {
  let em: { insert: ReturnType<typeof mock.fn<(entity: unknown, rows: unknown) => Promise<void>>> };
  let service: AuditService;
  const userId = randomUUID();
  const sessionId = randomUUID();

  beforeEach(() => {
    em = { insert: mock.fn(async () => {}) };
    service = new AuditService({} as unknown as DataSource);
  });

  const manager = () => em as unknown as EntityManager;

  it("inserts one row per event with the client's ip and user agent and the metadata", async () => {
    await service.record(
      manager(),
      {
        type: 'LOGIN',
        userId,
        sessionId,
        client: { ipAddress: '203.0.113.7', userAgent: 'curl/8.5.0' },
        metadata: { method: 'password', attempts: 1, remembered: false, note: null },
      },
      { type: 'LOGIN_FAILED', userId: null },
    );
    assert.equal(em.insert.mock.callCount(), 1);
    const [entity, rows] = em.insert.mock.calls[0].arguments;
    assert.equal(entity, AuditEventEntity);
    assert.deepEqual(rows, [
      {
        type: 'LOGIN',
        userId,
        sessionId,
        ipAddress: '203.0.113.7',
        userAgent: 'curl/8.5.0',
        metadata: { method: 'password', attempts: 1, remembered: false, note: null },
      },
      { type: 'LOGIN_FAILED', userId: null, sessionId: null, ipAddress: null, userAgent: null, metadata: {} },
    ]);
  });

  it('records null ip and user agent for a null client', async () => {
    await service.record(manager(), { type: 'LOGOUT', userId, sessionId, client: null });
    const [, rows] = em.insert.mock.calls[0].arguments;
    assert.deepEqual(rows, [{ type: 'LOGOUT', userId, sessionId, ipAddress: null, userAgent: null, metadata: {} }]);
  });

  for (const key of ['password', 'newPassword', 'refreshToken', 'tokenHash', 'passwordHash', 'clientSecret', 'Authorization', 'ACCESS_TOKEN']) {
    it(`rejects metadata with the key ${JSON.stringify(key)} and inserts nothing`, async () => {
      const value = 'hunter2-XYZZY';
      await assert.rejects(service.record(manager(), { type: 'PASSWORD_CHANGED', userId, metadata: { [key]: value } }), (e: unknown) => {
        assert.ok(e instanceof Error);
        assert.match(e.message, new RegExp(`Audit metadata key "${key}" is not allowed`));
        assert.ok(!e.message.includes(value));
        return true;
      });
      assert.equal(em.insert.mock.callCount(), 0);
    });
  }

  it('inserts nothing when only a later event carries a forbidden key', async () => {
    await assert.rejects(
      service.record(manager(), { type: 'LOGIN', userId }, { type: 'TOKEN_REFRESH', userId, metadata: { oldRefreshToken: 'x' } }),
      /not allowed/,
    );
    assert.equal(em.insert.mock.callCount(), 0);
  });

  it('does nothing when given no events', async () => {
    await service.record(manager());
    assert.equal(em.insert.mock.callCount(), 0);
  });

  it('propagates a failed insert (so the caller rolls back)', async () => {
    em.insert.mock.mockImplementation(async () => {
      throw new Error('insert failed');
    });
    await assert.rejects(service.record(manager(), { type: 'LOGIN', userId }), /insert failed/);
  });
});
