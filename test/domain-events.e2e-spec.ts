import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { EventEmitter2 } from '@nestjs/event-emitter';
import { DataSource } from 'typeorm';
import { AuditService } from '../src/audit/audit.service';
import { DOMAIN_EVENTS, type DomainEvent } from '../src/events/domain-events';
import { UsersService } from '../src/users/users.service';
import { bearer, login, registerUser } from './helpers/factories';
import { createTestApp, TestApp } from './helpers/test-app';

describe('domain events (e2e)', () => {
  let t: TestApp;
  let heard: DomainEvent[];
  before(async () => {
    t = await createTestApp({ LOGIN_MAX_FAILURES_PER_IDENTIFIER: '2', LOGIN_BACKOFF_BASE: '1' });
    const emitter = t.app.get(EventEmitter2);
    for (const name of Object.values(DOMAIN_EVENTS)) emitter.on(name, (event: DomainEvent) => heard.push(event));
  });
  after(async () => {
    await t.close();
  });
  beforeEach(() => {
    heard = [];
  });

  const named = (name: string) => heard.filter((e) => e.name === name);

  it('tells of a registration, a login and a logout, each once, with who, which session and why', async () => {
    const user = await registerUser(t.http);
    assert.deepEqual(
      named('user.registered').map((e) => ({ userId: (e as { userId: string }).userId })),
      [{ userId: user.id }],
    );
    const tokens = await login(t.http, user, 'events-agent/2.0');
    const [created] = named('session.created');
    assert.deepEqual(
      { userId: created.userId, sessionId: (created as { sessionId: string }).sessionId, userAgent: created.userAgent },
      { userId: user.id, sessionId: tokens.sessionId, userAgent: 'events-agent/2.0' },
    );
    assert.match(created.occurredAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    const [{ id: auditId }] = await t.db.query(`SELECT id FROM audit_events WHERE session_id = $1 AND type = 'LOGIN'`, [tokens.sessionId]);
    assert.equal(created.auditEventId, auditId);

    assert.equal((await t.http.post('/api/v1/auth/logout').set('Authorization', bearer(tokens))).status, 204);
    assert.deepEqual(
      named('session.ended').map((e) => ({ sessionId: (e as { sessionId: string }).sessionId, reason: (e as { reason: string }).reason })),
      [{ sessionId: tokens.sessionId, reason: 'logout' }],
    );
    assert.deepEqual(
      heard.map((e) => e.name),
      ['user.registered', 'session.created', 'session.ended'],
    );
  });

  it('tells of a password change and of the other sessions it ended', async () => {
    const user = await registerUser(t.http);
    const [kept, other] = [await login(t.http, user), await login(t.http, user)];
    heard = [];
    const res = await t.http
      .put('/api/v1/users/me/password')
      .set('Authorization', bearer(kept))
      .send({ currentPassword: user.password, newPassword: `${user.password}-and-more` });
    assert.equal(res.status, 204);
    assert.deepEqual(
      named('user.password_changed').map((e) => [e.userId, (e as { sessionId: string }).sessionId]),
      [[user.id, kept.sessionId]],
    );
    assert.deepEqual(
      named('session.ended').map((e) => [(e as { sessionId: string }).sessionId, (e as { reason: string }).reason]),
      [[other.sessionId, 'password_changed']],
    );
  });

  it('tells of failed logins and of the lock they set', async () => {
    const user = await registerUser(t.http);
    for (let i = 0; i < 2; i++) await t.http.post('/api/v1/auth/login').send({ email: user.email, password: 'wrong password, surely' });
    assert.deepEqual(
      named('login.failed').map((e) => [e.userId, (e as { method: string }).method]),
      [
        [user.id, 'email'],
        [user.id, 'email'],
      ],
    );
    assert.deepEqual(
      named('account.locked').map((e) => [e.userId, (e as { scope: string }).scope, (e as { lockedSeconds: number }).lockedSeconds]),
      [[user.id, 'identifier', 1]],
    );
  });

  it('tells of a change of role', async () => {
    const user = await registerUser(t.http);
    await t.app.get(UsersService).setRole(user.email, 'admin', 'test');
    assert.deepEqual(
      named('user.role_changed').map((e) => [e.userId, (e as { from: string }).from, (e as { to: string }).to]),
      [[user.id, 'user', 'admin']],
    );
  });

  it('waits for the commit, and says nothing of a change that rolled back', async () => {
    const user = await registerUser(t.http);
    heard = [];
    const audit = t.app.get(AuditService);
    await t.db.transaction(async (em) => {
      await audit.record(em, { type: 'PASSWORD_CHANGED', userId: user.id });
      assert.deepEqual(heard, [], 'nothing before the commit');
    });
    assert.deepEqual(
      named('user.password_changed').map((e) => e.userId),
      [user.id],
    );
    heard = [];
    await assert.rejects(
      t.db.transaction(async (em) => {
        await audit.record(em, { type: 'PASSWORD_CHANGED', userId: user.id });
        throw new Error('rolled back');
      }),
      /rolled back/,
    );
    assert.deepEqual(heard, []);
  });

  it('says nothing of a transaction whose failed statement was caught: PostgreSQL rolls it back at its COMMIT', async () => {
    const user = await registerUser(t.http);
    heard = [];
    const audit = t.app.get(AuditService);
    // TypeORM resolves it (the COMMIT's answer is ROLLBACK, not an error), and called its after-commit hook until 0.24.2.
    await t.db.transaction(async (em) => {
      await audit.record(em, { type: 'PASSWORD_CHANGED', userId: user.id });
      await assert.rejects(em.query('SELECT 1 / 0'), /division by zero/);
    });
    assert.deepEqual(
      await t.db.query(`SELECT 1 FROM audit_events WHERE type = 'PASSWORD_CHANGED' AND user_id = $1`, [user.id]),
      [],
      'nothing committed',
    );
    assert.deepEqual(heard, []);
  });

  it('drops what a nested transaction published when it rolls back to its savepoint, and keeps what a released one did', async () => {
    const [kept, undone, nested] = [await registerUser(t.http), await registerUser(t.http), await registerUser(t.http)];
    heard = [];
    const audit = t.app.get(AuditService);
    await t.db.transaction(async (em) => {
      await audit.record(em, { type: 'PASSWORD_CHANGED', userId: kept.id });
      await assert.rejects(
        em.transaction(async (inner) => {
          await audit.record(inner, { type: 'PASSWORD_CHANGED', userId: undone.id });
          throw new Error('inner part rolled back');
        }),
        /inner part rolled back/,
      );
      await em.transaction((inner) => audit.record(inner, { type: 'PASSWORD_CHANGED', userId: nested.id }));
      assert.deepEqual(heard, [], 'nothing before the outer commit');
    });
    const written = await t.db.query(`SELECT user_id FROM audit_events WHERE type = 'PASSWORD_CHANGED' AND user_id = ANY($1::uuid[])`, [
      [kept.id, undone.id, nested.id],
    ]);
    assert.deepEqual(written.map((r: { user_id: string }) => r.user_id).sort(), [kept.id, nested.id].sort());
    assert.deepEqual(
      named('user.password_changed')
        .map((e) => e.userId)
        .sort(),
      [kept.id, nested.id].sort(),
    );
  });

  it('refuses to record outside a transaction, where the head lock would end with the statement', async () => {
    const user = await registerUser(t.http);
    const count = async () => (await t.db.query(`SELECT count(*)::int AS n FROM audit_events WHERE user_id = $1`, [user.id]))[0].n as number;
    const before = await count();
    await assert.rejects(
      t.app.get(AuditService).record(t.db.manager, { type: 'PASSWORD_CHANGED', userId: user.id }),
      /inside a transaction of Sessionary's data source/,
    );
    // Nor in a transaction of another data source (a host's own), even on the same database.
    const hosts = await new DataSource({ type: 'postgres', url: t.config.DATABASE_URL }).initialize();
    try {
      await assert.rejects(
        hosts.transaction((em) => t.app.get(AuditService).record(em, { type: 'PASSWORD_CHANGED', userId: user.id })),
        /inside a transaction of Sessionary's data source/,
      );
    } finally {
      await hosts.destroy();
    }
    assert.equal(await count(), before);
  });

  it("catches a listener's rejected promise (an @OnEvent with suppressErrors: false) instead of leaving it unhandled", async () => {
    const emitter = t.app.get(EventEmitter2);
    let rejected = 0;
    const rejecting = async () => {
      rejected++;
      await Promise.resolve();
      throw new Error('async listener bug');
    };
    // eslint-disable-next-line @typescript-eslint/no-misused-promises -- a listener whose promise rejects is the subject
    emitter.on('session.created', rejecting);
    try {
      const user = await registerUser(t.http);
      const res = await t.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password });
      assert.equal(res.status, 200);
      assert.equal(rejected, 1);
      // Unhandled, the rejection would end this test's process (Node's default) about now.
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(named('session.created').length, 1, 'the other listeners still heard it');
    } finally {
      // eslint-disable-next-line @typescript-eslint/no-misused-promises -- the same listener, taken off
      emitter.off('session.created', rejecting);
    }
  });

  it('keeps a failing listener from failing the change it hears of', async () => {
    const emitter = t.app.get(EventEmitter2);
    const failing = () => {
      throw new Error('listener bug');
    };
    emitter.on('session.created', failing);
    try {
      const user = await registerUser(t.http);
      const res = await t.http.post('/api/v1/auth/login').send({ email: user.email, password: user.password });
      assert.equal(res.status, 200);
      assert.equal(named('session.created').length, 1, 'the other listeners still heard it');
    } finally {
      emitter.off('session.created', failing);
    }
  });
});
