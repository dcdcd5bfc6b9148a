import assert from 'node:assert/strict';
import { createPublicKey, createSecretKey, generateKeyPairSync, KeyObject, randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import * as jwt from 'jsonwebtoken';
import { KeyRing, RING_STALE_AFTER_MS } from '../src/keys/key-ring.service';
import { KeyRotationService, NextKeyTooNewError } from '../src/keys/key-rotation.service';
import { KeyRotationTask } from '../src/keys/key-rotation.task';
import { auditRows } from './helpers/db';
import { registerAndLogin, sleep } from './helpers/factories';
import { CliResult, runCli, runCliProcess, runCliWith } from './helpers/cli';
import { createTestApp, freshDatabase, TestApp } from './helpers/test-app';

const decodeHeader = (token: string) => JSON.parse(Buffer.from(token.split('.')[0], 'base64url').toString('utf8')) as Record<string, unknown>;

async function whoami(t: TestApp, token: string): Promise<number> {
  return (await t.http.get('/api/v1/auth/session').set('Authorization', `Bearer ${token}`)).status;
}

/** Claims our service would accept for this session, signed however the caller likes. */
function claimsFor(tokens: { accessToken: string }): Record<string, unknown> {
  const payload = JSON.parse(Buffer.from(tokens.accessToken.split('.')[1], 'base64url').toString('utf8')) as Record<string, unknown>;
  return { ...payload, jti: randomUUID() };
}

function forge(claims: Record<string, unknown>, key: KeyObject | string, algorithm: jwt.Algorithm, header: Record<string, unknown>): string {
  return jwt.sign(claims, key as jwt.Secret, { algorithm, header: { alg: algorithm, typ: 'at+jwt', ...header } as jwt.JwtHeader });
}

async function keyRows(t: TestApp): Promise<Array<{ kid: string; state: string; algorithm: string; private_key: Buffer | null }>> {
  return t.db.query(
    `SELECT kid, state, algorithm, private_key FROM signing_keys
      ORDER BY created_at, array_position(ARRAY['retired', 'retiring', 'current', 'next']::varchar[], state), kid`,
  );
}

/** The ring as kid, algorithm and state, oldest first. */
async function ringOf(t: TestApp): Promise<string[][]> {
  return (await keyRows(t)).map((r) => [r.kid, r.algorithm, r.state]);
}

/** The ring's current and next keys, as `state:algorithm:kid`, current first. */
async function currentAndNext(t: TestApp): Promise<string[]> {
  const rows = (await t.db.query(`SELECT kid, state, algorithm FROM signing_keys WHERE state IN ('current', 'next') ORDER BY state`)) as Array<{
    kid: string;
    state: string;
    algorithm: string;
  }>;
  return rows.map((k) => `${k.state}:${k.algorithm}:${k.kid}`);
}

/** How many KEY_ROTATED events the log holds. */
async function rotationsIn(t: TestApp): Promise<number> {
  return ((await t.db.query(`SELECT count(*)::int AS n FROM audit_events WHERE type = 'KEY_ROTATED'`)) as Array<{ n: number }>)[0].n;
}

/**
 * Makes the next key look published an hour ago: a rotation promotes a next key made after the
 * current one only once verifiers caching the JWKS can have it (nextKeyPublicationSeconds).
 */
async function publishedLongAgo(t: TestApp): Promise<void> {
  await t.db.query(`UPDATE signing_keys SET created_at = created_at - interval '1 hour' WHERE state = 'next'`);
}

/** The command's stdout; it must exit 0. */
async function cli(databaseUrl: string, ...args: string[]): Promise<string> {
  return stdoutOf(await runCli(databaseUrl, ...args));
}

/** A command's stdout; it must have exited 0. */
function stdoutOf(run: CliResult): string {
  assert.equal(run.code, 0, run.stderr);
  return run.stdout;
}

/** Waits (briefly: NOTIFY takes milliseconds) until `check` holds; fails after `ms`. */
async function eventually(check: () => boolean | Promise<boolean>, ms = 3_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) assert.fail('the condition did not hold in time');
    await sleep(20);
  }
}

describe('signing keys: ring, rotation, JWKS (e2e)', () => {
  let url: string;
  let a: TestApp;
  let b: TestApp;

  before(async () => {
    url = await freshDatabase();
    a = await createTestApp({ DATABASE_URL: url });
    b = await createTestApp({ DATABASE_URL: url });
  });
  after(async () => {
    await b?.close();
    await a?.close();
  });

  it('starts with an ES256 current key and a next key, private parts sealed, and names the key in every token', async () => {
    const rows = await keyRows(a);
    assert.deepEqual(
      rows.map((r) => [r.state, r.algorithm]),
      [
        ['current', 'ES256'],
        ['next', 'ES256'],
      ],
    );
    for (const row of rows) assert.equal(row.private_key![0], 1); // the sealed format, not a DER key (0x30)
    const { tokens } = await registerAndLogin(a.http);
    assert.deepEqual(decodeHeader(tokens.accessToken), { alg: 'ES256', typ: 'at+jwt', kid: rows[0].kid });
    assert.equal(await whoami(b, tokens.accessToken), 200); // the other instance verifies it from the same ring
  });

  it('publishes the current and next public keys at /.well-known/jwks.json, with a short max-age and nothing private', async () => {
    const res = await a.http.get('/.well-known/jwks.json');
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'], /^application\/jwk-set\+json/);
    assert.equal(res.headers['cache-control'], 'public, max-age=180'); // ACCESS_TOKEN_TTL 900 / 5
    const body = JSON.parse(res.text) as { keys: Array<Record<string, string>> };
    const rows = await keyRows(a);
    assert.deepEqual(body.keys.map((k) => k.kid).sort(), rows.map((r) => r.kid).sort());
    for (const key of body.keys) {
      assert.deepEqual(Object.keys(key).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y']);
      assert.deepEqual([key.kty, key.crv, key.alg, key.use], ['EC', 'P-256', 'ES256', 'sig']);
    }
  });

  it('issues tokens that jose verifies offline against the published JWKS', async () => {
    const { createRemoteJWKSet, jwtVerify } = await import('jose');
    await a.app.listen(0, '127.0.0.1');
    const address = a.app.getHttpServer().address() as { port: number };
    const jwks = createRemoteJWKSet(new URL(`http://127.0.0.1:${address.port}/.well-known/jwks.json`));
    const { user, tokens } = await registerAndLogin(a.http);
    const { payload, protectedHeader } = await jwtVerify(tokens.accessToken, jwks, {
      issuer: 'sessionary',
      audience: 'sessionary-api',
      typ: 'at+jwt',
      algorithms: ['ES256'],
    });
    assert.equal(payload.sub, user.id);
    assert.equal(protectedHeader.kid, (await keyRows(a))[0].kid);
    const forged = forge(claimsFor(tokens), generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, 'ES256', { kid: protectedHeader.kid });
    await assert.rejects(jwtVerify(forged, jwks), /signature verification failed/);
  });

  it('refuses tokens signed by a key not in the ring, with a forged kid, with jwk/jku/x5u headers, or with alg swapped to HS256 over the public key', async () => {
    const { tokens } = await registerAndLogin(a.http);
    const claims = claimsFor(tokens);
    const kid = decodeHeader(tokens.accessToken).kid as string;
    const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const attackerJwk = attacker.publicKey.export({ format: 'jwk' });
    const published = (JSON.parse((await a.http.get('/.well-known/jwks.json')).text) as { keys: Array<Record<string, string>> }).keys.find(
      (k) => k.kid === kid,
    )!;
    const publicPem = createPublicKey({ key: published, format: 'jwk' }).export({ format: 'pem', type: 'spki' }) as string;
    const cases: Array<[string, string]> = [
      ['a key not in the ring', forge(claims, attacker.privateKey, 'ES256', { kid: randomBytes(32).toString('base64url') })],
      ['our current kid on a foreign key', forge(claims, attacker.privateKey, 'ES256', { kid })],
      ['no kid at all', forge(claims, attacker.privateKey, 'ES256', {})],
      ['an embedded jwk', forge(claims, attacker.privateKey, 'ES256', { kid, jwk: attackerJwk })],
      ['a jku', forge(claims, attacker.privateKey, 'ES256', { kid, jku: 'https://attacker.example/jwks.json' })],
      ['an x5u', forge(claims, attacker.privateKey, 'ES256', { kid, x5u: 'https://attacker.example/cert.pem' })],
      ['HS256 keyed with the public key (PEM)', forge(claims, createSecretKey(Buffer.from(publicPem)), 'HS256', { kid })],
      ['HS256 keyed with the public key (JWK JSON)', forge(claims, createSecretKey(Buffer.from(JSON.stringify(published))), 'HS256', { kid })],
      ['alg none', `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'at+jwt', kid })).toString('base64url')}.${tokens.accessToken.split('.')[1]}.`],
    ];
    for (const [name, token] of cases) assert.equal(await whoami(a, token), 401, name);
    assert.equal(await whoami(a, tokens.accessToken), 200); // the genuine token of the same session
  });

  it('rotates without logging anyone out: earlier tokens verify until their key retires, and both instances switch at once', async () => {
    const { tokens: before } = await registerAndLogin(a.http);
    const oldKid = decodeHeader(before.accessToken).kid as string;
    const [, nextRow] = await keyRows(a);
    const result = await a.app.get(KeyRotationService).rotate('cli');
    assert.equal(result.current, nextRow.kid);
    assert.equal(result.retiring?.kid, oldKid);
    // Both instances sign with the new key at once (NOTIFY), not after the minute's reload.
    await eventually(() => a.app.get(KeyRing).signingKey().kid === nextRow.kid && b.app.get(KeyRing).signingKey().kid === nextRow.kid);
    const { tokens: afterA } = await registerAndLogin(a.http);
    const { tokens: afterB } = await registerAndLogin(b.http);
    assert.equal(decodeHeader(afterA.accessToken).kid, nextRow.kid);
    assert.equal(decodeHeader(afterB.accessToken).kid, nextRow.kid);
    for (const t of [a, b]) {
      assert.equal(await whoami(t, before.accessToken), 200, 'a token of the retiring key still works');
      assert.equal(await whoami(t, afterA.accessToken), 200);
    }
    const kids = (JSON.parse((await b.http.get('/.well-known/jwks.json')).text) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
    assert.deepEqual(kids.sort(), [oldKid, nextRow.kid, result.next].sort());
    const [event] = await a.db.query(`SELECT metadata FROM audit_events WHERE type = 'KEY_ROTATED' AND metadata->>'trigger' = 'cli'`);
    assert.equal(event.metadata.current, nextRow.kid);
    assert.equal(event.metadata.retiring, oldKid);

    // Once every token it signed has expired (here: its time moved to now), the key verifies nothing.
    // Each instance hears of it on its own LISTEN connection: b's having reloaded says nothing of a's.
    await a.db.query(`UPDATE signing_keys SET verify_until = now() WHERE kid = $1`, [oldKid]);
    await eventually(async () => (await whoami(b, before.accessToken)) === 401 && (await whoami(a, before.accessToken)) === 401);
    assert.equal(await whoami(a, afterB.accessToken), 200);
    // The scheduled job retires it and erases its private part; the JWKS stops publishing it.
    await a.app.get(KeyRotationTask).handleTick();
    const retired = (await keyRows(a)).find((r) => r.kid === oldKid)!;
    assert.deepEqual([retired.state, retired.private_key], ['retired', null]);
    // A change of the ring like the others: audited in its transaction, the ring otherwise as it was.
    const retirements = await a.db.query(
      `SELECT metadata FROM audit_events WHERE type = 'KEY_ROTATED' AND metadata->>'trigger' = 'schedule' AND metadata->>'retired' = $1`,
      [oldKid],
    );
    assert.deepEqual(
      retirements.map((r: { metadata: Record<string, unknown> }) => r.metadata),
      [
        {
          trigger: 'schedule',
          algorithm: event.metadata.algorithm,
          current: nextRow.kid,
          next: result.next,
          retiring: null,
          retiringUntil: null,
          retired: oldKid,
        },
      ],
    );
    const published = (JSON.parse((await a.http.get('/.well-known/jwks.json')).text) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
    assert.ok(
      !published.includes(oldKid),
      JSON.stringify({
        published,
        oldKid,
        // What instance a holds (a Map serialises as {}), what the table holds, and both clocks.
        ring: [...(a.app.get(KeyRing) as unknown as { byKid: Map<string, { state: string; verifyUntil: Date | null }> }).byKid].map(
          ([kid, { state, verifyUntil }]) => ({ kid, state, verifyUntil }),
        ),
        rows: await a.db.query(`SELECT kid, state, verify_until, retired_at, now() AS db_now FROM signing_keys ORDER BY created_at`),
        now: new Date(),
      }),
    );
  });

  it('keys rotate and keys list work from the CLI, which shows no secret', async () => {
    await publishedLongAgo(a);
    const beforeKid = a.app.get(KeyRing).signingKey().kid;
    const rotated = await cli(url, 'keys', 'rotate');
    assert.match(rotated, /^Rotated: \S+ \(ES256\) signs now; \S+ is next\n/);
    assert.match(rotated, new RegExp(`${beforeKid} verifies until \\d{4}-`));
    await eventually(() => a.app.get(KeyRing).signingKey().kid !== beforeKid);
    const list = stdoutOf(await runCliProcess(url, 'keys', 'list')); // as its own process once
    const lines = list.trim().split('\n');
    assert.equal(lines[0], 'kid\talgorithm\tstate\tcreated\tactivated\tverify_until\tretired\tfrom');
    const rows = await keyRows(a);
    assert.deepEqual(
      lines.slice(1).map((l) => l.split('\t').slice(0, 3)),
      rows.map((r) => [r.kid, r.algorithm, r.state]),
    );
    for (const row of rows.filter((r) => r.private_key))
      assert.ok(!list.includes(row.private_key!.toString('base64')) && !list.includes(row.private_key!.toString('hex')));
    // Nor the decrypted key, in any form: the signing key as this instance holds it (its JWK's
    // `d`, its PKCS#8 in base64 and hex), and no column but the header's eight.
    const signing = a.app.get(KeyRing).signingKey().signingKey;
    const pkcs8 = signing.export({ format: 'der', type: 'pkcs8' });
    for (const secret of [String(signing.export({ format: 'jwk' }).d), pkcs8.toString('base64'), pkcs8.toString('hex')]) {
      assert.ok(secret.length > 20 && !list.includes(secret), 'the private key is not listed');
    }
    for (const line of list.split('\n').filter(Boolean)) assert.equal(line.split('\t').length, 8, JSON.stringify(line)); // a last field may be empty
  });

  it("leaves the ring as it is when a command runs with another SIGNING_ALGORITHM (a shell without the service's settings)", async () => {
    const [before, rotatedBefore] = [await ringOf(a), await rotationsIn(a)];
    const listed = await runCliWith({ SIGNING_ALGORITHM: 'HS256' }, url, 'keys', 'list');
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(await ringOf(a), before, 'the next key (ES256) was not replaced by an HS256 one');
    assert.equal(await rotationsIn(a), rotatedBefore, 'no KEY_ROTATED event');
  });

  it("keys rotate with another SIGNING_ALGORITHM than the ring's next key: refused (exit 2), nothing changed, saying how the algorithm changes", async () => {
    const [before, rotatedBefore] = [await ringOf(a), await rotationsIn(a)];
    const refused = await runCliWith({ SIGNING_ALGORITHM: 'HS256' }, url, 'keys', 'rotate');
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /keys rotate: the ring's next key is ES256, and SIGNING_ALGORITHM here is HS256: nothing rotated\./);
    assert.match(refused.stderr, /change the service's setting and restart it/);
    assert.equal(refused.stdout, '');
    assert.deepEqual(await ringOf(a), before, 'the ring is as it was');
    assert.equal(await rotationsIn(a), rotatedBefore, 'no KEY_ROTATED event');
    // The service's own setting rotates, in-process as from the CLI.
    await publishedLongAgo(a);
    const rotated = await a.app.get(KeyRotationService).rotate('cli');
    assert.equal(rotated.algorithm, 'ES256');
    assert.equal(await rotationsIn(a), rotatedBefore + 1);
  });

  it('rotates on schedule once the current key is SIGNING_KEY_ROTATION_DAYS old, on one instance only', async () => {
    const scheduled = await createTestApp({ DATABASE_URL: url, SIGNING_KEY_ROTATION_DAYS: '1' });
    const other = await createTestApp({ DATABASE_URL: url, SIGNING_KEY_ROTATION_DAYS: '1' });
    try {
      const current = () => scheduled.db.query(`SELECT kid FROM signing_keys WHERE state = 'current'`).then((r: Array<{ kid: string }>) => r[0].kid);
      const fresh = await current();
      await scheduled.app.get(KeyRotationTask).handleTick();
      assert.equal(await current(), fresh, 'a young key is not rotated');
      await scheduled.db.query(`UPDATE signing_keys SET activated_at = now() - interval '25 hours' WHERE state = 'current'`);
      await publishedLongAgo(scheduled);
      await Promise.all([scheduled.app.get(KeyRotationTask).handleTick(), other.app.get(KeyRotationTask).handleTick()]);
      assert.notEqual(await current(), fresh);
      // One rotation of that key (the database is the file's: an earlier test's retirement is audited on schedule too).
      const events = await scheduled.db.query(
        `SELECT 1 FROM audit_events WHERE type = 'KEY_ROTATED' AND metadata->>'trigger' = 'schedule' AND metadata->>'retiring' = $1`,
        [fresh],
      );
      assert.equal(events.length, 1);
    } finally {
      await scheduled.close();
      await other.close();
    }
  });

  it('leaves the next key of a change of SIGNING_ALGORITHM rolling out to the instances that made it: an instance still on the old setting neither retires it nor rotates over it', async () => {
    const shared = await freshDatabase();
    const old = await createTestApp({ DATABASE_URL: shared, SIGNING_KEY_ROTATION_DAYS: '1' }); // an ES256 ring
    let updated: TestApp | undefined;
    try {
      updated = await createTestApp({ DATABASE_URL: shared, SIGNING_ALGORITHM: 'HS256', SIGNING_KEY_ROTATION_DAYS: '1' }); // booted with the new setting
      const states = () => currentAndNext(old);
      const adopted = await states();
      assert.match(adopted.join(' '), /^current:ES256:\S+ next:HS256:\S+$/, 'the new setting made its next key at boot');
      // Until 0.22.0 the old instance's maintenance retired it within five minutes, leaving no next key.
      await old.app.get(KeyRotationTask).handleTick();
      assert.deepEqual(await states(), adopted);
      // Nor does its scheduled rotation promote over it (it made a fresh ES256 current key).
      await old.db.query(`UPDATE signing_keys SET activated_at = now() - interval '25 hours' WHERE state = 'current'`);
      const result = await old.app.get(KeyRotationService).maintain(1);
      assert.equal(result.rotated, undefined);
      assert.equal(result.foreignNext, 'HS256');
      assert.deepEqual(await states(), adopted);
      // The instance with the new setting rotates into it, once verifiers caching the JWKS can have it.
      await updated.app.get(KeyRotationTask).handleTick();
      assert.deepEqual(await states(), adopted, 'not while the next key is seconds old');
      await publishedLongAgo(updated);
      await updated.app.get(KeyRotationTask).handleTick();
      const [current] = await states();
      assert.equal(current, `current:HS256:${adopted[1].split(':')[2]}`, 'the next key the new setting made signs now');
    } finally {
      await updated?.close();
      await old.close();
    }
  });

  it('rotates a stopped current key at once even while the next key has another algorithm (a rollout): logins work again', async () => {
    const shared = await freshDatabase();
    const old = await createTestApp({ DATABASE_URL: shared });
    let updated: TestApp | undefined;
    try {
      updated = await createTestApp({ DATABASE_URL: shared, SIGNING_ALGORITHM: 'HS256' });
      await updated.close();
      updated = undefined;
      const [{ kid: stopped }] = await old.db.query(`SELECT kid FROM signing_keys WHERE state = 'current'`);
      assert.equal((await old.db.query(`SELECT algorithm FROM signing_keys WHERE state = 'next'`))[0].algorithm, 'HS256');
      await old.db.query(`UPDATE signing_keys SET verify_until = now() WHERE state = 'current'`);
      // Until 0.24.2 the maintenance only warned of the foreign next key, and every new token failed.
      const result = await old.app.get(KeyRotationService).maintain(undefined);
      assert.ok(result.rotated, 'rotated at once');
      assert.notEqual(result.rotated.current, stopped);
      assert.equal(result.rotated.algorithm, 'ES256');
      await old.app.get(KeyRing).reload();
      const { tokens } = await registerAndLogin(old.http);
      assert.equal(decodeHeader(tokens.accessToken).kid, result.rotated.current);
      assert.equal(await whoami(old, tokens.accessToken), 200);
    } finally {
      await updated?.close();
      await old.close();
    }
  });

  it('rotating twice: the second rotation waits until the next key has been published longer than verifiers cache the JWKS (--now: at once)', async () => {
    await publishedLongAgo(a);
    const first = await a.app.get(KeyRotationService).rotate('cli'); // its next key is made now
    const [before, rotatedBefore] = [await ringOf(a), await rotationsIn(a)];
    const refused = await runCliWith({}, url, 'keys', 'rotate');
    assert.equal(refused.code, 2, refused.stderr);
    // ACCESS_TOKEN_TTL 900: twice the JWKS's max-age of 180 s (a copy a shared cache served, kept
    // that long again), plus the minute every instance takes to reload the ring.
    assert.match(
      refused.stderr,
      new RegExp(
        `keys rotate: the next key ${first.next} was published \\d+ s ago, and verifiers may hold an earlier JWKS for 420 s: nothing rotated\\. Rotate again in \\d+ s, or now with --now`,
      ),
    );
    assert.equal(refused.stdout, '');
    assert.deepEqual(await ringOf(a), before, 'the ring is as it was');
    assert.equal(await rotationsIn(a), rotatedBefore, 'no KEY_ROTATED event');
    await assert.rejects(a.app.get(KeyRotationService).rotate('cli'), NextKeyTooNewError);
    // The operator's choice after a leak.
    const forced = await runCliWith({}, url, 'keys', 'rotate', '--now');
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(forced.stdout, new RegExp(`^Rotated: ${first.next} \\(ES256\\) signs now; \\S+ is next\\n`));
    assert.equal(await rotationsIn(a), rotatedBefore + 1);
    assert.equal((await runCliWith({}, url, 'keys', 'rotate', '--later')).code, 2, 'an unknown option is a usage error');
  });

  it('a scheduled rotation that is due waits for a next key published moments ago, then rotates', async () => {
    const shared = await freshDatabase();
    const scheduled = await createTestApp({ DATABASE_URL: shared, SIGNING_KEY_ROTATION_DAYS: '1' });
    try {
      const ring = async () =>
        (
          (await scheduled.db.query(`SELECT kid, state FROM signing_keys WHERE state IN ('current', 'next') ORDER BY state`)) as Array<{
            kid: string;
          }>
        ).map((k) => k.kid);
      // The ring made at boot: its next key was made with the current one, so a due rotation goes at once.
      await scheduled.db.query(`UPDATE signing_keys SET activated_at = now() - interval '25 hours' WHERE state = 'current'`);
      const [, bootNext] = await ring();
      assert.equal((await scheduled.app.get(KeyRotationService).maintain(1)).rotated?.current, bootNext);
      // Due again at once (a current key made 25 hours old), but its next key is seconds old.
      await scheduled.db.query(`UPDATE signing_keys SET activated_at = now() - interval '25 hours' WHERE state = 'current'`);
      const waiting = await ring();
      const result = await scheduled.app.get(KeyRotationService).maintain(1);
      assert.equal(result.rotated, undefined, 'no rotation yet');
      assert.deepEqual(await ring(), waiting);
      await publishedLongAgo(scheduled);
      assert.equal((await scheduled.app.get(KeyRotationService).maintain(1)).rotated?.current, waiting[1], 'the next tick rotates');
    } finally {
      await scheduled.close();
    }
  });

  it('reports the ring in /metrics', async () => {
    const text = (await a.http.get('/metrics')).text;
    assert.match(text, /^sessionary_signing_key_age_seconds \d+(\.\d+)?(e[-+]\d+)?$/m);
    assert.match(text, /^sessionary_signing_keys\{state="current"\} 1$/m);
    assert.match(text, /^sessionary_signing_keys\{state="next"\} 1$/m);
  });

  it("leaves no poll of the ring running once the app has closed (its listener's stop no longer starts one)", async () => {
    const closing = await createTestApp({ DATABASE_URL: url });
    const ring = closing.app.get(KeyRing) as unknown as { untrustedPoll: NodeJS.Timeout | undefined };
    assert.equal(ring.untrustedPoll, undefined, 'trusted: no poll while the app runs');
    await closing.close();
    // Until 0.27.0 the listener's stop (onLost) started the poll again after the shutdown had
    // cleared it: every 2 s for the process's life, a read through the closed pool and a warning.
    assert.equal(ring.untrustedPoll, undefined, 'no poll after the close');
  });

  it('refuses to start with another KEY_ENCRYPTION_KEY, naming the setting and not the key', async () => {
    const wrong = randomBytes(48).toString('base64');
    await assert.rejects(createTestApp({ DATABASE_URL: url, KEY_ENCRYPTION_KEY: wrong }), (error: Error) => {
      assert.match(error.message, /does not decrypt: KEY_ENCRYPTION_KEY is not the one it was stored with/);
      assert.ok(!error.message.includes(wrong));
      return true;
    });
  });
});

describe('signing keys: HS256 and the upgrade from JWT_SECRET (e2e)', () => {
  const jwtSecret = randomBytes(48).toString('base64');
  /** A token as the service signed them before the ring: HS256 with JWT_SECRET, no kid. */
  const legacyToken = (tokens: { accessToken: string }) => forge(claimsFor(tokens), jwtSecret, 'HS256', {});

  it('with SIGNING_ALGORITHM=HS256, JWT_SECRET is the first current key: tokens before the ring keep working, nothing is published', async () => {
    const t = await createTestApp({ DATABASE_URL: await freshDatabase(), SIGNING_ALGORITHM: 'HS256', JWT_SECRET: jwtSecret });
    try {
      const rows = await keyRows(t);
      assert.deepEqual(
        rows.map((r) => [r.state, r.algorithm]),
        [
          ['current', 'HS256'],
          ['next', 'HS256'],
        ],
      );
      assert.ok(!rows[0].private_key!.includes(Buffer.from(jwtSecret)), 'the secret is stored sealed');
      const { tokens } = await registerAndLogin(t.http);
      assert.deepEqual(decodeHeader(tokens.accessToken), { alg: 'HS256', typ: 'at+jwt', kid: rows[0].kid });
      assert.equal(await whoami(t, legacyToken(tokens)), 200);
      assert.equal(await whoami(t, forge(claimsFor(tokens), randomBytes(48).toString('base64'), 'HS256', {})), 401);
      assert.deepEqual(JSON.parse((await t.http.get('/.well-known/jwks.json')).text), { keys: [] });
    } finally {
      await t.close();
    }
  });

  it('an ES256 ring created over live sessions keeps JWT_SECRET verifying their tokens until they expire; over none it does not', async () => {
    const url = await freshDatabase();
    // A deployment from before the ring: sessions exist, their tokens were signed with JWT_SECRET.
    const old = await createTestApp({ DATABASE_URL: url, JWT_SECRET: jwtSecret });
    const { tokens } = await registerAndLogin(old.http);
    await old.close();
    // As before the ring existed: no key, and no ring ever made (see the next test for a rebuilt one).
    const reset = async (t: TestApp) => t.db.query('TRUNCATE signing_keys, signing_key_ring_made');
    const upgraded = await createTestApp({ DATABASE_URL: url, JWT_SECRET: jwtSecret });
    try {
      await reset(upgraded);
      await upgraded.app.get(KeyRotationService).ensureRing();
      await upgraded.app.get(KeyRing).reload();
      const rows = await upgraded.db.query(
        `SELECT state, algorithm, from_jwt_secret, verify_until > now() + interval '900 seconds' AS long_enough FROM signing_keys ORDER BY state`,
      );
      assert.deepEqual(
        rows.map((r: Record<string, unknown>) => [r.state, r.algorithm, r.from_jwt_secret]),
        [
          ['current', 'ES256', false],
          ['next', 'ES256', false],
          ['retiring', 'HS256', true],
        ],
      );
      assert.equal(rows[2].long_enough, true);
      assert.equal(await whoami(upgraded, legacyToken(tokens)), 200);
      const [event] = await upgraded.db.query(`SELECT metadata FROM audit_events WHERE type = 'KEY_ROTATED' ORDER BY seq DESC LIMIT 1`);
      assert.equal(event.metadata.trigger, 'boot');

      // No active session: no token can be in use, so nothing is seeded.
      await upgraded.db.query(`UPDATE sessions SET ended_at = now(), end_reason = 'revoked'`);
      await reset(upgraded);
      await upgraded.app.get(KeyRotationService).ensureRing();
      await upgraded.app.get(KeyRing).reload();
      assert.deepEqual((await upgraded.db.query(`SELECT count(*)::int AS n FROM signing_keys WHERE from_jwt_secret`))[0].n, 0);
    } finally {
      await upgraded.close();
    }
  });
});

describe('signing keys: a ring rebuilt (TRUNCATE signing_keys, after a leaked KEY_ENCRYPTION_KEY) (e2e)', () => {
  const jwtSecret = randomBytes(48).toString('base64');
  const legacyToken = (tokens: { accessToken: string }) => forge(claimsFor(tokens), jwtSecret, 'HS256', {});
  const rebuild = async (t: TestApp) => {
    await t.db.query('TRUNCATE signing_keys');
    await t.app.get(KeyRotationService).ensureRing();
    await t.app.get(KeyRing).reload();
  };

  for (const algorithm of ['HS256', 'ES256'] as const) {
    it(`is not seeded from JWT_SECRET again (${algorithm}, sessions active): kid-less tokens signed with it get 401`, async () => {
      const t = await createTestApp({ DATABASE_URL: await freshDatabase(), SIGNING_ALGORITHM: algorithm, JWT_SECRET: jwtSecret });
      try {
        const { tokens } = await registerAndLogin(t.http);
        await rebuild(t);
        const rows = await t.db.query(`SELECT state, algorithm, from_jwt_secret FROM signing_keys ORDER BY state`);
        assert.deepEqual(
          rows.map((r: Record<string, unknown>) => [r.state, r.algorithm, r.from_jwt_secret]),
          [
            ['current', algorithm, false],
            ['next', algorithm, false],
          ],
        );
        assert.equal(await whoami(t, legacyToken(tokens)), 401);
        // The session goes on with tokens of the new ring.
        const refreshed = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
        assert.equal(refreshed.status, 200);
        assert.equal(await whoami(t, refreshed.body.accessToken), 200);
      } finally {
        await t.close();
      }
    });
  }
});

describe('signing keys: rows changed in the table without KEY_ENCRYPTION_KEY, and the emergency stop (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ DATABASE_URL: await freshDatabase() });
  });
  after(async () => {
    await t?.close();
  });

  it("refuses a public key swapped onto the current key's row: a running instance keeps the copy it read, a new one does not start, and tokens of the swapped-in key get 401", async () => {
    const { tokens } = await registerAndLogin(t.http);
    const kid = decodeHeader(tokens.accessToken).kid as string;
    // The published keys, in kid order (a kept copy comes last in the ring's own order).
    const jwks = async () =>
      (JSON.parse((await t.http.get('/.well-known/jwks.json')).text) as { keys: Array<{ kid: string }> }).keys.sort((a, b) =>
        a.kid.localeCompare(b.kid),
      );
    const jwksBefore = await jwks();
    const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const [{ public_jwk: genuine }] = await t.db.query(`SELECT public_jwk FROM signing_keys WHERE kid = $1`, [kid]);
    const ring = t.app.get(KeyRing);
    const errors: string[] = [];
    const logger = (ring as unknown as { logger: object }).logger;
    Object.assign(ring, {
      logger: { ...logger, error: (message: unknown) => void errors.push(String(message)), warn: () => undefined, log: () => undefined },
    });
    await t.db.query(`UPDATE signing_keys SET public_jwk = $2 WHERE kid = $1`, [kid, attacker.publicKey.export({ format: 'jwk' })]);
    try {
      await ring.reload();
      await ring.reload(); // logged once
      const refusal = `Signing key ${kid} was changed in the table: its stored public key is not the public part of its private key`;
      assert.deepEqual(errors, [`${refusal}: this instance keeps the copy it read before (a current key)`]);
      assert.equal(ring.staleness(), undefined, 'the read went through: no instance goes unready over one bad row');
      assert.equal(await whoami(t, forge(claimsFor(tokens), attacker.privateKey, 'ES256', { kid })), 401);
      assert.equal(await whoami(t, tokens.accessToken), 200);
      assert.deepEqual(await jwks(), jwksBefore);
      const refusedRows = async () =>
        (await t.http.get('/metrics')).text.split('\n').filter((l) => l.startsWith('sessionary_signing_key_rows_refused{'));
      assert.deepEqual(await refusedRows(), [
        'sessionary_signing_key_rows_refused{handling="kept_earlier_copy"} 1',
        'sessionary_signing_key_rows_refused{handling="left_out"} 0',
      ]);
      // A row this instance never read, sealed under another key: left out.
      await t.db.query(
        `INSERT INTO signing_keys (kid, algorithm, state, public_jwk, private_key, activated_at, verify_until)
         VALUES ('planted', 'ES256', 'retiring', $1, $2, now(), now() + interval '1 hour')`,
        [attacker.publicKey.export({ format: 'jwk' }), Buffer.concat([Buffer.from([1]), randomBytes(200)])],
      );
      await ring.reload();
      assert.deepEqual(await refusedRows(), [
        'sessionary_signing_key_rows_refused{handling="kept_earlier_copy"} 1',
        'sessionary_signing_key_rows_refused{handling="left_out"} 1',
      ]);
      assert.equal(await whoami(t, forge(claimsFor(tokens), attacker.privateKey, 'ES256', { kid: 'planted' })), 401);
      // An instance that never read the key cannot tell the genuine one: it does not start.
      await assert.rejects(createTestApp({ DATABASE_URL: t.config.DATABASE_URL! }), new RegExp(refusal));
    } finally {
      Object.assign(ring, { logger });
      await t.db.query(`DELETE FROM signing_keys WHERE kid = 'planted'`);
      await t.db.query(`UPDATE signing_keys SET public_jwk = $2 WHERE kid = $1`, [kid, genuine]);
    }
    await ring.reload();
    assert.match((await t.http.get('/metrics')).text, /^sessionary_signing_key_rows_refused\{handling="left_out"\} 0$/m);
    assert.match((await t.http.get('/metrics')).text, /^sessionary_signing_key_rows_refused\{handling="kept_earlier_copy"\} 0$/m);
  });

  it('answers readiness 503 once the ring has not been read for a while, each read failing; 200 again after a read', async () => {
    const ring = t.app.get(KeyRing);
    const rotation = t.app.get(KeyRotationService);
    const load = rotation.loadLiveKeys.bind(rotation);
    assert.equal((await t.http.get('/health/ready')).status, 200);
    ring.staleAfterMs = 400;
    // Read well just now: ready, however long ago the boot was.
    await ring.reload();
    assert.equal((await t.http.get('/health/ready')).status, 200);
    rotation.loadLiveKeys = () => Promise.reject(new Error('Signing key x does not decrypt'));
    try {
      await assert.rejects(ring.reload(), /does not decrypt/);
      assert.equal((await t.http.get('/health/ready')).status, 200, 'one failed read is not yet staleness');
      await sleep(450);
      const res = await t.http.get('/health/ready');
      assert.deepEqual(
        { status: res.status, body: res.body },
        { status: 503, body: { statusCode: 503, error: 'Service Unavailable', message: 'The service is temporarily unavailable; retry later' } },
      );
    } finally {
      rotation.loadLiveKeys = load;
    }
    await ring.reload();
    assert.equal((await t.http.get('/health/ready')).status, 200);
    ring.staleAfterMs = RING_STALE_AFTER_MS;
  });

  it("stops a current key at once when an operator sets its verify_until (the README's emergency stop); a rotation then signs with another", async () => {
    const { tokens } = await registerAndLogin(t.http);
    const kid = decodeHeader(tokens.accessToken).kid as string;
    assert.equal((await t.db.query(`SELECT state FROM signing_keys WHERE kid = $1`, [kid]))[0].state, 'current');
    await t.db.query(`UPDATE signing_keys SET verify_until = now() WHERE kid = $1`, [kid]);
    await eventually(async () => (await whoami(t, tokens.accessToken)) === 401);
    const published = (JSON.parse((await t.http.get('/.well-known/jwks.json')).text) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
    assert.ok(!published.includes(kid), 'a stopped key is no longer published');
    await t.app.get(KeyRotationService).rotate('cli');
    await t.app.get(KeyRing).reload();
    const refreshed = await t.http.post('/api/v1/auth/refresh').send({ refreshToken: tokens.refreshToken });
    assert.equal(refreshed.status, 200);
    assert.notEqual(decodeHeader(refreshed.body.accessToken).kid, kid);
    assert.equal(await whoami(t, refreshed.body.accessToken), 200);
    // The rotation made the stopped key a retiring one without giving it its usual time back.
    assert.equal(await whoami(t, tokens.accessToken), 401);
    const [row] = await t.db.query(`SELECT state, verify_until <= now() AS stopped FROM signing_keys WHERE kid = $1`, [kid]);
    assert.deepEqual({ ...row }, { state: 'retiring', stopped: true });
  });

  it('after every key is stopped (a leaked KEY_ENCRYPTION_KEY), the maintenance rotates at once to a fresh key: a stopped next key is retired, never promoted', async () => {
    const stopped = (await t.db.query(`SELECT kid, state FROM signing_keys WHERE state IN ('current', 'next')`)) as Array<{
      kid: string;
      state: string;
    }>;
    assert.equal(stopped.length, 2);
    await t.db.query(`UPDATE signing_keys SET verify_until = now() WHERE state IN ('current', 'next')`);
    const result = await t.app.get(KeyRotationService).maintain(undefined);
    assert.ok(result.rotated, 'rotated at once, though no rotation is scheduled');
    const kids = stopped.map((k) => k.kid);
    assert.ok(!kids.includes(result.rotated.current) && !kids.includes(result.rotated.next), 'fresh current and next keys');
    const after = (await t.db.query(`SELECT kid, state, private_key IS NULL AS erased FROM signing_keys WHERE kid = ANY($1)`, [kids])) as Array<{
      kid: string;
      state: string;
      erased: boolean;
    }>;
    const was = (state: string) => after.find((k) => k.kid === stopped.find((s) => s.state === state)!.kid)!;
    assert.deepEqual({ ...was('next') }, { kid: was('next').kid, state: 'retired', erased: true });
    assert.equal(was('current').state, 'retiring');
    await t.app.get(KeyRing).reload();
    const { tokens } = await registerAndLogin(t.http);
    assert.equal(decodeHeader(tokens.accessToken).kid, result.rotated.current);
    assert.equal(await whoami(t, tokens.accessToken), 200);
  });

  it('a next key an operator stops is replaced by a fresh one, published: a rotation right after waits for it rather than sign with a key no JWKS has shown', async () => {
    const nextKid = async () => ((await t.db.query(`SELECT kid FROM signing_keys WHERE state = 'next'`)) as Array<{ kid: string }>)[0]?.kid;
    const currentKid = async () => ((await t.db.query(`SELECT kid FROM signing_keys WHERE state = 'current'`)) as Array<{ kid: string }>)[0].kid;
    const current = await currentKid();
    const stoppedNext = await nextKid();
    await t.db.query(`UPDATE signing_keys SET verify_until = now() WHERE state = 'next'`);
    await t.app.get(KeyRing).reload();
    // Held until the next read, but it verifies nothing: not counted (an alert on next == 0 fires).
    assert.match((await t.http.get('/metrics')).text, /^sessionary_signing_keys\{state="next"\} 0$/m);
    // keys rotate at once: until 0.24.2 it promoted nothing and made a fresh current key that signed unpublished.
    await assert.rejects(t.app.get(KeyRotationService).rotate('cli'), NextKeyTooNewError);
    assert.equal(await currentKid(), current, 'the current key still signs');
    const published = await nextKid();
    assert.ok(published && published !== stoppedNext, 'a fresh next key is published, and kept');
    const [stoppedRow] = await t.db.query(`SELECT state, private_key IS NULL AS erased FROM signing_keys WHERE kid = $1`, [stoppedNext]);
    assert.deepEqual({ ...stoppedRow }, { state: 'retired', erased: true });
    // The maintenance does the same for a next key stopped later: until 0.24.2 the ring went without one.
    const rotations = await rotationsIn(t);
    await t.db.query(`UPDATE signing_keys SET verify_until = now() WHERE state = 'next'`);
    const result = await t.app.get(KeyRotationService).maintain(1);
    assert.equal(result.rotated, undefined);
    assert.deepEqual(result.retired, [published]);
    const fresh = await nextKid();
    assert.ok(fresh && fresh !== published);
    assert.equal(await currentKid(), current);
    assert.equal(await rotationsIn(t), rotations + 1);
    const [event] = await t.db.query(`SELECT metadata FROM audit_events WHERE type = 'KEY_ROTATED' ORDER BY seq DESC LIMIT 1`);
    assert.deepEqual([event.metadata.current, event.metadata.next, event.metadata.retired], [current, fresh, published]);
    // Due by the schedule, but the fresh key is seconds old: no rotation until verifiers can have it.
    await t.db.query(`UPDATE signing_keys SET activated_at = now() - interval '25 hours' WHERE state = 'current'`);
    assert.equal((await t.app.get(KeyRotationService).maintain(1)).rotated, undefined);
    assert.equal(await currentKid(), current);
    await publishedLongAgo(t);
    assert.equal((await t.app.get(KeyRotationService).maintain(1)).rotated?.current, fresh);
  });

  it('never promotes a next key that does not open: the maintenance retires it and publishes a fresh one; a process that cannot open the current key changes nothing', async () => {
    const ring = () => currentAndNext(t);
    // A process with another KEY_ENCRYPTION_KEY and another SIGNING_ALGORITHM (a stale secret in a canary):
    // until 0.24.2 its boot made a next key sealed under its own setting before it failed.
    const before = await ring();
    const wrong = randomBytes(48).toString('base64');
    const url = t.config.DATABASE_URL!;
    await assert.rejects(
      createTestApp({ DATABASE_URL: url, KEY_ENCRYPTION_KEY: wrong, SIGNING_ALGORITHM: 'HS256' }),
      /KEY_ENCRYPTION_KEY does not open the ring's current key/,
    );
    assert.deepEqual(await ring(), before, 'nothing written');
    // A next key whose sealed part does not open (changed in the table, or sealed under another setting).
    const [current, next] = before.map((k) => k.split(':')[2]);
    await t.db.query(`UPDATE signing_keys SET private_key = set_byte(private_key, 20, (get_byte(private_key, 20) + 1) % 256) WHERE kid = $1`, [next]);
    await t.db.query(`UPDATE signing_keys SET activated_at = now() - interval '25 hours' WHERE state = 'current'`);
    const result = await t.app.get(KeyRotationService).maintain(1);
    assert.equal(result.rotated, undefined, 'not promoted, though due');
    assert.deepEqual(result.retired, [next]);
    const [nowCurrent, nowNext] = (await ring()).map((k) => k.split(':')[2]);
    assert.equal(nowCurrent, current);
    assert.notEqual(nowNext, next);
    await publishedLongAgo(t);
    assert.equal((await t.app.get(KeyRotationService).maintain(1)).rotated?.current, nowNext);
  });
});

describe('signing keys: an instance whose listener hears nothing (DATABASE_LISTEN_URL naming another database) (e2e)', () => {
  let a: TestApp;
  let b: TestApp;
  before(async () => {
    const database = await freshDatabase();
    a = await createTestApp({ DATABASE_URL: database });
    b = await createTestApp({ DATABASE_URL: database, DATABASE_LISTEN_URL: await freshDatabase() });
  });
  after(async () => {
    await Promise.all([a?.close(), b?.close()]);
  });

  it("reads the ring every two seconds while its listener is not trusted: a stopped key's tokens get 401 there within seconds, not the safety net's minute", async () => {
    const { tokens } = await registerAndLogin(a.http);
    // Twice: the second from B's token memory, which the stop must empty too.
    for (let i = 0; i < 2; i++) assert.equal(await whoami(b, tokens.accessToken), 200);
    assert.equal(b.app.get(KeyRing).listening, false, 'B hears none of the notifications A causes');
    await a.db.query(`UPDATE signing_keys SET verify_until = now() WHERE kid = $1`, [decodeHeader(tokens.accessToken).kid]);
    const stopped = performance.now();
    let status = 200;
    while (status === 200 && performance.now() - stopped < 15_000) {
      await sleep(100);
      status = await whoami(b, tokens.accessToken);
    }
    // Within 15 s, well under the safety net's 60 s (a bound, not a timing: the poll is every 2 s).
    assert.equal(status, 401);
  });
});

describe("signing keys: a key's verify_until on an instance whose clock is off the database's (e2e)", () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp({ DATABASE_URL: await freshDatabase() });
  });
  after(async () => {
    await t?.close();
  });

  /** Runs `work` with this process's Date.now() `offsetMs` off the real clock (the database's, on this machine). */
  const withClockOff = async <T>(offsetMs: number, work: () => Promise<T>): Promise<T> => {
    const realNow = Date.now;
    Date.now = () => realNow() + offsetMs;
    try {
      return await work();
    } finally {
      Date.now = realNow;
    }
  };

  it('stops a stopped key when the database says so, on an instance whose clock runs behind, and keeps a retiring one to its end on one that runs ahead', async () => {
    const ring = t.app.get(KeyRing);
    const [next] = (await t.db.query(`SELECT kid, algorithm FROM signing_keys WHERE state = 'next'`)) as Array<{ kid: string; algorithm: string }>;
    assert.ok(ring.verificationKey(next.algorithm, next.kid), 'the next key verifies before the stop');
    // The emergency stop; the NOTIFY's read (on the real clock) done before the clock is moved.
    await t.db.query(`UPDATE signing_keys SET verify_until = now() WHERE kid = $1`, [next.kid]);
    await eventually(async () => ring.verificationKey(next.algorithm, next.kid) === undefined);
    // 30 s behind: until 0.29.0 verify_until was compared with Date.now(), and the key verified 30 s more.
    await withClockOff(-30_000, async () => {
      await ring.reload();
      assert.equal(ring.verificationKey(next.algorithm, next.kid), undefined);
      assert.equal(ring.verifiesUntil(next.algorithm, next.kid), 0);
    });
    // A deadline a minute away, on an instance two minutes ahead: it verifies for that minute
    // by this instance's clock (until 0.29.0: not at all, as if its time had passed).
    await t.db.query(`UPDATE signing_keys SET verify_until = now() + interval '60 seconds' WHERE kid = $1`, [next.kid]);
    await eventually(async () => ring.verificationKey(next.algorithm, next.kid) !== undefined);
    await withClockOff(120_000, async () => {
      const before = Date.now();
      await ring.reload();
      assert.ok(ring.verificationKey(next.algorithm, next.kid), 'verifies by the database clock');
      const until = ring.verifiesUntil(next.algorithm, next.kid);
      assert.ok(until > before + 55_000 && until <= Date.now() + 60_000, `${until - before} ms after the read began`);
    });
  });
});

describe("signing keys: a rotation covers the service's token lifetime, whoever rotates (e2e)", () => {
  it("keys rotate from a shell without ACCESS_TOKEN_TTL keeps the retired key verifying for the service's hour-long tokens, and waits for their JWKS max-age", async () => {
    const url = await freshDatabase();
    const service = await createTestApp({ DATABASE_URL: url, ACCESS_TOKEN_TTL: '3600' });
    try {
      const retiringFor = async () =>
        (
          (await service.db.query(
            `SELECT extract(epoch FROM verify_until - now())::float8 AS seconds FROM signing_keys WHERE state = 'retiring'`,
          )) as Array<{
            seconds: number;
          }>
        ).map((r) => r.seconds);
      const { tokens } = await registerAndLogin(service.http);
      // The ring's first next key was made with the current one: a second rotation must wait for
      // it. The shell's ACCESS_TOKEN_TTL is unset (900 s: a JWKS max-age of 180 s, 420 s to wait);
      // the service's tokens live an hour, its JWKS max-age is 300 s: 660 s to wait.
      const first = await runCliWith({ ACCESS_TOKEN_TTL: undefined }, url, 'keys', 'rotate');
      assert.equal(first.code, 0, first.stderr);
      const [retiring] = await retiringFor();
      // Until 0.28.0: 960 s (the shell's 900 and the margin), and the service's tokens failed after a quarter of their life.
      assert.ok(retiring > 3600 && retiring <= 3660, `the retired key verifies for ${retiring} s`);
      const refused = await runCliWith({ ACCESS_TOKEN_TTL: undefined }, url, 'keys', 'rotate');
      assert.equal(refused.code, 2, refused.stderr);
      assert.match(refused.stderr, /verifiers may hold an earlier JWKS for 660 s: nothing rotated/);
      await service.app.get(KeyRing).reload();
      assert.equal(await whoami(service, tokens.accessToken), 200, 'the token signed before the rotation still verifies');
    } finally {
      await service.close();
    }
  });

  it('a lifetime counts while tokens issued under it may live (its last record, the lifetime, five minutes and a minute), and no longer', async () => {
    const url = await freshDatabase();
    const service = await createTestApp({ DATABASE_URL: url, ACCESS_TOKEN_TTL: '600' });
    const lifetimes = async () =>
      (await service.db.query(`SELECT ttl_seconds FROM access_token_lifetimes ORDER BY ttl_seconds`)).map(
        (r: { ttl_seconds: number }) => r.ttl_seconds,
      );
    const rotateAndRead = async () => {
      await publishedLongAgo(service);
      const { retiring } = await service.app.get(KeyRotationService).rotate('cli');
      const [{ seconds }] = (await service.db.query(
        `SELECT extract(epoch FROM verify_until - now())::float8 AS seconds FROM signing_keys WHERE kid = $1`,
        [retiring!.kid],
      )) as Array<{ seconds: number }>;
      return seconds;
    };
    try {
      assert.deepEqual(await lifetimes(), [], 'a boot writes nothing');
      await registerAndLogin(service.http);
      assert.deepEqual(await lifetimes(), [600], 'said before the first token');
      // Another instance issued hour-long tokens, last heard of 30 minutes ago: some still live.
      await service.db.query(`INSERT INTO access_token_lifetimes (ttl_seconds, seen_at) VALUES (3600, now() - interval '30 minutes')`);
      const counted = await rotateAndRead();
      assert.ok(counted > 3600 && counted <= 3660, `the retired key verifies for ${counted} s`);
      // Last heard of 67 minutes ago: past 3,600 s and six minutes, its tokens have all expired.
      await service.db.query(`UPDATE access_token_lifetimes SET seen_at = now() - interval '67 minutes' WHERE ttl_seconds = 3600`);
      const lapsed = await rotateAndRead();
      assert.ok(lapsed > 600 && lapsed <= 660, `the retired key verifies for ${lapsed} s`);
    } finally {
      await service.close();
    }
  });
});

describe('signing keys: a ring whose current key was deleted (e2e)', () => {
  it('boots: the next key, published since it was made, signs, and a fresh next key is made (every boot failed until 0.28.0)', async () => {
    const url = await freshDatabase();
    const first = await createTestApp({ DATABASE_URL: url });
    let second: TestApp | undefined;
    try {
      const [current, next] = (await currentAndNext(first)).map((k) => k.split(':')[2]);
      // Where the README's stop sets verify_until, an operator deleted the row.
      await first.db.query(`DELETE FROM signing_keys WHERE kid = $1`, [current]);
      second = await createTestApp({ DATABASE_URL: url });
      const [nowCurrent, nowNext] = await currentAndNext(second);
      assert.equal(nowCurrent, `current:ES256:${next}`);
      assert.match(nowNext, /^next:ES256:/);
      assert.notEqual(nowNext, `next:ES256:${next}`);
      const [event] = await auditRows(second.db, { type: 'KEY_ROTATED' }).then((rows) => rows.filter((r) => r.metadata.current === next));
      assert.ok(event, 'the boot that repaired the ring recorded it');
      assert.equal(event.metadata.trigger, 'boot');
      const { tokens } = await registerAndLogin(second.http);
      assert.equal(decodeHeader(tokens.accessToken).kid, next);
      assert.equal(await whoami(second, tokens.accessToken), 200);
    } finally {
      await second?.close();
      await first.close();
    }
  });

  it("a command from a shell with another SIGNING_ALGORITHM promotes the next key as it is and keeps the ring's algorithm", async () => {
    const url = await freshDatabase();
    const first = await createTestApp({ DATABASE_URL: url });
    try {
      const [current, next] = (await currentAndNext(first)).map((k) => k.split(':')[2]);
      await first.db.query(`DELETE FROM signing_keys WHERE kid = $1`, [current]);
      stdoutOf(await runCliWith({ SIGNING_ALGORITHM: 'HS256' }, url, 'keys', 'list'));
      const [nowCurrent, nowNext] = await currentAndNext(first);
      assert.equal(nowCurrent, `current:ES256:${next}`);
      assert.match(nowNext, /^next:ES256:/, "not the shell's HS256");
    } finally {
      await first.close();
    }
  });
});

describe('signing keys: auditing', () => {
  it('records KEY_ROTATED without a user, for the ring made at boot', async () => {
    const t = await createTestApp({ DATABASE_URL: await freshDatabase() });
    try {
      const rows = await auditRows(t.db, { type: 'KEY_ROTATED' });
      assert.equal(rows.length, 1);
      assert.equal(rows[0].user_id, null);
    } finally {
      await t.close();
    }
  });
});
