import assert from 'node:assert/strict';
import { afterEach, before, describe, it } from 'node:test';
import { Logger } from '@nestjs/common';
import { Client } from 'pg';
import { randomUUID } from 'node:crypto';
import { notifyFromNewConnection, PgChannelListener } from '../src/database/pg-channel-listener';
import { SessionCache } from '../src/sessions/session-cache';
import { SessionChangeListener } from '../src/sessions/session-change-listener';
import { CapturingLogger } from './helpers/capturing-logger';
import { sleep } from './helpers/factories';
import { emptyDatabase } from './helpers/test-app';

/** Polls `probe` until it is true, at most `timeoutMs`; answers whether it became true. */
async function until(probe: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !probe()) await sleep(10);
  return probe();
}

/**
 * A switchover behind a proxy or DNS name that leaves the old server up: the pool's new
 * connections reach the new server while the long-lived listening connection stays on the old
 * one, and hears none of the changes made on the new one. Two databases of one server stand for
 * the two servers (a NOTIFY reaches only listeners of its own database).
 */
describe('a channel listener checks at each heartbeat that it hears the server new connections reach (e2e)', () => {
  const logs = new CapturingLogger();
  let listened: string; // where the listener connects, the "old server"
  let elsewhere: string; // another database, the "new server"
  let listener: PgChannelListener | undefined;
  /** Where the pool's new connections go now (the test moves it). */
  let poolReaches: string;
  let trusted = 0;
  let lost = 0;

  before(async () => {
    [listened, elsewhere] = [await emptyDatabase(), await emptyDatabase()];
    Logger.overrideLogger(logs); // this file's process only
  });
  afterEach(async () => {
    await listener?.stop();
    listener = undefined;
  });

  const start = async (options: { echoTimeoutMs?: number; send?: (channel: string, payload: string) => Promise<unknown> } = {}) => {
    [trusted, lost] = [0, 0];
    logs.lines.length = 0;
    poolReaches = listened;
    listener = new PgChannelListener({
      url: listened,
      channel: 'sessionary_test_channel',
      name: 'test-listener',
      heartbeatMs: 100,
      maxBackoffMs: 100,
      echoTimeoutMs: options.echoTimeoutMs ?? 500,
      notifyThroughPool: (channel) => notifyFromNewConnection(listened, 'test-pool', channel, ''),
      notifyFromNewConnection: options.send ?? ((channel, payload) => notifyFromNewConnection(poolReaches, 'test-pool', channel, payload)),
      onNotification: () => undefined,
      onListening: () => {
        trusted++;
      },
      onLost: () => {
        lost++;
      },
    });
    await listener.start();
    assert.ok(await until(() => listener!.listening, 3000), 'listening');
  };

  it('counts the connection lost when new connections reach a server it does not listen on, and trusts none until they reach its own again', async () => {
    await start();
    // Beats come and go while both reach the same server: nothing is lost.
    await sleep(500);
    assert.deepEqual({ trusted, lost, listening: listener!.listening }, { trusted: 1, lost: 0, listening: true });

    poolReaches = elsewhere;
    assert.ok(await until(() => !listener!.listening, 3000), 'the next heartbeat noticed');
    assert.equal(lost, 1);
    const warning = logs.lines.find((l) => l.level === 'warn' && l.context === 'test-listener');
    assert.match(warning!.message, /a NOTIFY sent from a new connection to the service's database did not arrive within 0.5 s/);
    // Reconnecting to where it listened before, it still does not hear new connections: never trusted meanwhile.
    await sleep(1500);
    assert.equal(listener!.listening, false);
    assert.equal(trusted, 1, 'trusted again while new connections reach another server');

    poolReaches = listened;
    assert.ok(await until(() => listener!.listening, 3000), 'listening again once new connections reach its server');
    assert.equal(trusted, 2);
  });

  /** A NOTIFY-sending stand-in that refuses (a connection limit) while `refusing()` says so. */
  const refusable = (refusing: () => boolean, counts: { refused: number; sent: number }) => async (channel: string, payload: string) => {
    if (refusing()) {
      counts.refused++;
      throw new Error('sorry, too many clients already');
    }
    await notifyFromNewConnection(poolReaches, 'test-pool', channel, payload);
    counts.sent++;
  };
  const warningsOf = () => logs.lines.filter((l) => l.level === 'warn' && l.context === 'test-listener');

  it('keeps trusting the connection through a beat or two whose echo could not be sent, quietly', async () => {
    let refuseNext = 0;
    let refused = 0;
    let sentAfterTwo = false;
    await start({
      send: async (channel, payload) => {
        if (refuseNext > 0) {
          refuseNext--;
          refused++;
          throw new Error('sorry, too many clients already');
        }
        await notifyFromNewConnection(listened, 'test-pool', channel, payload);
        if (refused === 2) sentAfterTwo = true;
      },
    });
    refuseNext = 2;
    assert.ok(await until(() => sentAfterTwo, 3000), 'an echo was sent after two that were not');
    assert.deepEqual({ trusted, lost, listening: listener!.listening }, { trusted: 1, lost: 0, listening: true });
    assert.deepEqual(warningsOf(), []);
  });

  it('stops trusting the connection after three beats in a row whose echo could not be sent, keeping it, and trusts it again at the next echo heard', async () => {
    let refuse = false;
    const counts = { refused: 0, sent: 0 };
    await start({ send: refusable(() => refuse, counts) });
    const pid = listener!.backendPid;
    refuse = true;
    // The pool's server at its connection limit after a switchover: nothing shows where this
    // connection is, so what its consumers hold is no longer trusted (they read the database).
    assert.ok(await until(() => !listener!.listening, 3000), 'trust withdrawn');
    assert.ok(counts.refused >= 3, `after three echoes not sent (${counts.refused})`);
    assert.deepEqual({ trusted, lost }, { trusted: 1, lost: 1 });
    assert.equal(listener!.backendPid, pid, 'the same connection, not dropped');
    // More beats without an echo: nothing more is withdrawn or logged.
    const refusedThen = counts.refused;
    assert.ok(await until(() => counts.refused >= refusedThen + 3, 3000), 'beats went on');
    assert.deepEqual({ trusted, lost, listening: listener!.listening }, { trusted: 1, lost: 1, listening: false });
    const warnings = warningsOf();
    assert.equal(warnings.length, 1, JSON.stringify(warnings));
    assert.match(
      warnings[0].message,
      /^Not trusting sessionary_test_channel \(could not check for 3 heartbeats in a row that it hears the server new connections .*no NOTIFY could be sent from a new connection: sorry, too many clients already\)/,
    );

    refuse = false;
    assert.ok(await until(() => listener!.listening, 3000), 'trusted again once an echo is heard');
    assert.deepEqual({ trusted, lost }, { trusted: 2, lost: 1 });
    assert.equal(listener!.backendPid, pid);
    assert.deepEqual(
      logs.lines.filter((l) => l.context === 'test-listener').map((l) => `${l.level}: ${l.message.replace(/ \(.*/, '')}`),
      ['warn: Not trusting sessionary_test_channel', 'log: Listening on sessionary_test_channel again'],
    );
  });

  it('trusts a new connection whose echo cannot be sent (no new connection: a connection limit) rather than reconnecting, until three echoes in a row were not sent', async () => {
    const counts = { refused: 0, sent: 0 };
    await start({ send: refusable(() => true, counts) });
    const pid = listener!.backendPid;
    assert.deepEqual({ trusted, lost }, { trusted: 1, lost: 0 });
    assert.ok(await until(() => !listener!.listening, 3000), 'trust withdrawn at the third');
    assert.ok(counts.refused >= 3, `after three echoes not sent (${counts.refused})`);
    assert.ok(await until(() => counts.refused >= 5, 3000), 'beats went on');
    assert.deepEqual({ trusted, lost, listening: listener!.listening, pid: listener!.backendPid }, { trusted: 1, lost: 1, listening: false, pid });
    assert.equal(warningsOf().length, 1, JSON.stringify(warningsOf()));
  });

  it('does not trust a connection made while echoes cannot be sent, until one is heard', async () => {
    let refuse = false;
    const counts = { refused: 0, sent: 0 };
    await start({ send: refusable(() => refuse, counts) });
    const pid = listener!.backendPid!;
    refuse = true;
    assert.ok(await until(() => !listener!.listening, 3000), 'trust withdrawn');
    const admin = new Client({ connectionString: listened });
    await admin.connect();
    try {
      await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    } finally {
      await admin.end();
    }
    assert.ok(await until(() => listener!.backendPid !== undefined && listener!.backendPid !== pid, 3000), 'connected again');
    // Its own echo could not be sent either: a new connection shows nothing about where new connections go.
    await sleep(300);
    assert.deepEqual({ trusted, listening: listener!.listening }, { trusted: 1, listening: false });
    refuse = false;
    assert.ok(await until(() => listener!.listening, 3000), 'trusted once an echo is heard');
    assert.equal(trusted, 2);
  });

  it("the session cache, the listener's consumer, is flushed and answers nothing while echoes cannot be sent, and is trusted again after", async () => {
    let refuse = false;
    const counts = { refused: 0, sent: 0 };
    poolReaches = listened;
    logs.lines.length = 0;
    const cache = new SessionCache({ max: 10, ttlMs: 60_000 });
    const sessions = new SessionChangeListener(cache, {
      url: listened,
      heartbeatMs: 100,
      maxBackoffMs: 100,
      notifyThroughPool: (channel) => notifyFromNewConnection(listened, 'test-pool', channel, ''),
      notifyFromNewConnection: refusable(() => refuse, counts),
    });
    try {
      await sessions.start();
      assert.ok(await until(() => cache.trusted, 3000), 'trusted');
      const entry = {
        userId: randomUUID(),
        role: 'user' as const,
        ended: false,
        idleExpiresAt: Date.now() + 60_000,
        absoluteExpiresAt: Date.now() + 60_000,
        lastSeenAt: Date.now(),
      };
      const id = randomUUID();
      assert.equal(cache.completeFill(cache.beginFill(id), entry), true);
      assert.ok(cache.get(id));
      refuse = true;
      assert.ok(await until(() => !cache.trusted, 3000), 'the cache is distrusted');
      assert.equal(cache.get(id), undefined);
      assert.equal(cache.size, 0, 'and flushed');
      // A read meanwhile is answered from the database and never stored.
      assert.equal(cache.completeFill(cache.beginFill(id), entry), false);
      const warnings = logs.lines.filter((l) => l.level === 'warn' && l.context === 'sessionary-listener');
      assert.equal(warnings.length, 1, JSON.stringify(warnings));
      assert.match(warnings[0].message, /^Not trusting the session cache \(.*\); sessions are checked in the database until an echo is heard$/);
      refuse = false;
      assert.ok(await until(() => cache.trusted, 3000), 'trusted again');
      assert.ok(
        logs.lines.some(
          (l) => l.context === 'sessionary-listener' && l.message === 'Listening for session changes again; the session cache is in use',
        ),
      );
    } finally {
      await sessions.stop();
    }
  });

  it('times the delivery, not the sending: an echo slow to connect but heard at once keeps the connection', async () => {
    let slow = false;
    let sent = 0;
    await start({
      echoTimeoutMs: 300,
      send: async (channel, payload) => {
        if (slow) await sleep(600); // longer than the echo's timeout
        await notifyFromNewConnection(listened, 'test-pool', channel, payload);
        sent++;
      },
    });
    slow = true;
    const before = sent;
    assert.ok(await until(() => sent >= before + 2, 5000), 'slow echoes were sent and heard');
    assert.deepEqual({ trusted, lost, listening: listener!.listening }, { trusted: 1, lost: 0, listening: true });
  });

  it('waits, when stopped, for an echo being sent (its connection closes before the stop ends)', async () => {
    let sending = false;
    let slow = false;
    let finished = 0;
    await start({
      send: async (channel, payload) => {
        if (slow) {
          sending = true;
          await sleep(400);
        }
        await notifyFromNewConnection(listened, 'test-pool', channel, payload);
        finished++;
      },
    });
    slow = true;
    assert.ok(await until(() => sending, 3000), 'an echo is being sent');
    const before = finished;
    await listener!.stop();
    listener = undefined;
    assert.equal(finished, before + 1, 'the echo had finished when stop() returned');
  });

  it('sends the echo from a connection of its own, closed once sent', async () => {
    const watcher = new Client({ connectionString: listened });
    await watcher.connect();
    try {
      await watcher.query('LISTEN sessionary_echo_probe');
      const heard = new Promise<string>((resolve) => watcher.once('notification', (m) => resolve(m.payload ?? '')));
      await notifyFromNewConnection(listened, 'test-echo', 'sessionary_echo_probe', 'nonce-1');
      assert.equal(await heard, 'nonce-1');
      const echoConnections = async () =>
        (await watcher.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE 'test-echo echo %'`)).rows[0]
          .n;
      // Its backend leaves pg_stat_activity a moment after the socket closes.
      let open = await echoConnections();
      for (let i = 0; open > 0 && i < 100; i++) {
        await sleep(10);
        open = await echoConnections();
      }
      assert.equal(open, 0, 'the echo connection was closed');
    } finally {
      await watcher.end();
    }
  });
});
