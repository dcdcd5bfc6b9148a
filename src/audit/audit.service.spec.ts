import 'reflect-metadata';
import { describe, it, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { BadRequestException } from '@nestjs/common';
import type { ConfigService } from '@nestjs/config';
import type { DataSource, EntityManager } from 'typeorm';
import type { AppConfig } from '../config/config';
import { ChainedEvent, eventHash, GENESIS_HASH, GLOBAL_CHAIN } from './audit-chain';
import type { DomainEventPublisher } from '../events/domain-event-publisher';
import { decodeCursor, encodeCursor } from './audit-cursor';
import { AuditService } from './audit.service';

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
      assert.deepEqual(decodeCursor(cursor), { seq, micros: null });
    });
    it(`round-trips seq ${seq} with its instant`, () => {
      const cursor = encodeCursor(seq, '1793882096789123');
      assert.ok(cursor.length <= 64, 'within the 64 characters the query accepts');
      assert.deepEqual(decodeCursor(cursor), { seq, micros: '1793882096789123' });
    });
  }

  it('accepts the a1 cursors of earlier versions (seq alone)', () => {
    assert.deepEqual(decodeCursor(b64('a1.42')), { seq: '42', micros: null });
  });

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
    ["base64url of 'a2.5' (no instant)", b64('a2.5')],
    ["base64url of 'a2.5.01' (leading zero)", b64('a2.5.01')],
    ["base64url of 'a2.5.-1'", b64('a2.5.-1')],
    ["base64url of 'a3.5.1' (other version)", b64('a3.5.1')],
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
  const KEY = 'unit-test-audit-key-of-at-least-32-bytes';
  const NOW = '2026-12-01T12:00:00.123456Z';
  type Call = { text: string; params: unknown[]; name?: string };
  let calls: Call[];
  let heads: Map<string, { position: string; hash: string }>;
  let failAppend: boolean;
  let service: AuditService;
  const userId = randomUUID();
  const sessionId = randomUUID();

  /** Sessionary's data source, which the manager below is a transaction of. */
  const dataSource = {} as unknown as DataSource;

  beforeEach(() => {
    calls = [];
    heads = new Map();
    failAppend = false;
    const config = { get: () => KEY } as unknown as ConfigService<AppConfig, true>;
    service = new AuditService(dataSource, config, { publish: () => undefined } as unknown as DomainEventPublisher);
  });

  /** A stand-in for PostgreSQL's two statements (the head lock and the append), as sql() runs them on the transaction's query runner. */
  const manager = () =>
    ({
      dataSource,
      queryRunner: {
        isTransactionActive: true,
        query: async (query: string | { name: string; text: string }, params: unknown[]) => {
          const [text, name] = typeof query === 'string' ? [query, undefined] : [query.text, query.name];
          calls.push({ text, params, name });
          if (text.includes('WHERE chain_key = $1 FOR UPDATE')) {
            // LOCK_ONE_HEAD: the head if it exists.
            const head = heads.get(params[0] as string);
            const records = head ? [{ chain_key: params[0], ...head, now: NOW, last_event_at: null }] : [];
            return { records, affected: records.length };
          }
          if (text.includes('INSERT INTO audit_chain_heads')) {
            const records = (params[0] as string[]).map((k) => ({
              chain_key: k,
              ...(heads.get(k) ?? { position: '0', hash: GENESIS_HASH }),
              now: NOW,
              last_event_at: null,
            }));
            return { records, affected: records.length };
          }
          if (failAppend) throw new Error('insert failed');
          return { records: [], affected: 0 };
        },
      },
    }) as unknown as EntityManager;

  const appendCall = () => calls.find((c) => c.text.includes('WITH appended'))!;
  const appended = () => {
    const p = appendCall().params as unknown[][];
    return p[0].map((_, i) => ({
      id: p[0][i] as string,
      type: p[1][i],
      userId: p[2][i],
      sessionId: p[3][i],
      ipAddress: p[4][i],
      userAgent: p[5][i],
      metadata: p[6][i],
      createdAt: appendCall().params[7],
      chainKey: p[8][i],
      position: p[9][i],
      prevHash: p[10][i],
      hash: p[11][i],
    }));
  };

  it("appends one row per event with the client's ip and user agent, canonical metadata and the chain fields", async () => {
    heads.set(userId, { position: '4', hash: 'a'.repeat(64) });
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
      { type: 'LOGOUT', userId, sessionId },
    );
    // Two statements, whatever the number of events, both prepared once per connection; several
    // chains' heads are locked under a savepoint (an incomplete try is undone, not completed out of order).
    assert.deepEqual(
      calls.map((c) => c.name ?? c.text),
      ['SAVEPOINT sessionary_lock_heads', 'sessionary_audit_lock_heads', 'RELEASE SAVEPOINT sessionary_lock_heads', 'sessionary_audit_append'],
    );
    assert.deepEqual(calls[1].params, [[GLOBAL_CHAIN, userId].sort(), GENESIS_HASH]);
    const rows = appended();
    assert.deepEqual(
      rows.map(({ id: _id, hash: _hash, ...rest }) => rest),
      [
        {
          type: 'LOGIN',
          userId,
          sessionId,
          ipAddress: '203.0.113.7',
          userAgent: 'curl/8.5.0',
          metadata: '{"attempts":1,"method":"password","note":null,"remembered":false}',
          createdAt: NOW,
          chainKey: userId,
          position: 5,
          prevHash: 'a'.repeat(64),
        },
        {
          type: 'LOGIN_FAILED',
          userId: null,
          sessionId: null,
          ipAddress: null,
          userAgent: null,
          metadata: '{}',
          createdAt: NOW,
          chainKey: GLOBAL_CHAIN,
          position: 1,
          prevHash: GENESIS_HASH,
        },
        {
          type: 'LOGOUT',
          userId,
          sessionId,
          ipAddress: null,
          userAgent: null,
          metadata: '{}',
          createdAt: NOW,
          chainKey: userId,
          position: 6,
          prevHash: rows[0].hash,
        },
      ],
    );
    for (const r of rows) {
      assert.equal(r.hash, eventHash(KEY, r.prevHash as string, r as unknown as ChainedEvent));
    }
    // The new heads: the last event of each chain.
    const keys = appendCall().params[12] as string[];
    const byKey = Object.fromEntries(keys.map((k, i) => [k, [(appendCall().params[13] as number[])[i], (appendCall().params[14] as string[])[i]]]));
    assert.deepEqual(byKey, { [userId]: [6, rows[2].hash], [GLOBAL_CHAIN]: [1, rows[1].hash] });
  });

  it("locks one chain's existing head with the one-head statement, and creates a missing head through the ordinary lock", async () => {
    heads.set(userId, { position: '4', hash: 'a'.repeat(64) });
    await service.record(manager(), { type: 'LOGOUT', userId, sessionId });
    assert.deepEqual(
      calls.map((c) => c.name),
      ['sessionary_audit_lock_heads_one', 'sessionary_audit_append'],
    );
    assert.deepEqual(calls[0].params, [userId]);
    assert.deepEqual(
      appended().map((r) => [r.position, r.prevHash]),
      [[5, 'a'.repeat(64)]],
    );
    calls = [];
    const newcomer = randomUUID();
    await service.record(manager(), { type: 'LOGIN', userId: newcomer, sessionId });
    assert.deepEqual(
      calls.map((c) => c.name),
      ['sessionary_audit_lock_heads_one', 'sessionary_audit_lock_heads', 'sessionary_audit_append'],
    );
    assert.deepEqual(calls[1].params, [[newcomer], GENESIS_HASH]);
    assert.deepEqual(
      appended().map((r) => [r.position, r.prevHash]),
      [[1, GENESIS_HASH]],
    );
  });

  it('records null ip and user agent for a null client', async () => {
    await service.record(manager(), { type: 'LOGOUT', userId, sessionId, client: null });
    const [row] = appended();
    assert.equal(row.ipAddress, null);
    assert.equal(row.userAgent, null);
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
      assert.equal(calls.length, 0);
    });
  }

  it('inserts nothing when only a later event carries a forbidden key', async () => {
    await assert.rejects(
      service.record(manager(), { type: 'LOGIN', userId }, { type: 'TOKEN_REFRESH', userId, metadata: { oldRefreshToken: 'x' } }),
      /not allowed/,
    );
    assert.equal(calls.length, 0);
  });

  it('does nothing when given no events', async () => {
    await service.record(manager());
    assert.equal(calls.length, 0);
  });

  it('propagates a failed insert (so the caller rolls back)', async () => {
    failAppend = true;
    await assert.rejects(service.record(manager(), { type: 'LOGIN', userId }), /insert failed/);
  });
});
