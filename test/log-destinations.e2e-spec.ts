import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Client } from 'pg';
import { newUserInput } from './helpers/factories';
import { ServiceProcess } from './helpers/service-process';
import { freshDatabase } from './helpers/test-app';

/** What each of the process's file descriptors is open on (Linux: /proc). */
function openFiles(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).flatMap((fd) => {
    try {
      return [readlinkSync(join(dir, fd))];
    } catch {
      return []; // closed while being listed
    }
  });
}

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' });
}

// ASVS 16.2.3: log data goes only where the documented inventory says (SECURITY.md): the
// process's stdout and stderr, and the audit events in its database. The service runs as it
// is deployed, with production settings and no AUDIT_CHECKPOINT_FILE or AUDIT_ARCHIVE_DIR (the
// two documented files, off by default), in a working directory, home and temporary
// directory of its own.
describe('where log data goes (e2e, a real process)', () => {
  const root = mkdtempSync(join(tmpdir(), 'sessionary-log-destinations-'));
  after(() => rmSync(root, { recursive: true, force: true }));

  it('writes log data only to stdout, stderr and the audit events: no regular file held open, none left in its working, home or temporary directory', async () => {
    const [cwd, home, tmp] = ['cwd', 'home', 'tmp'].map((name) => join(root, name));
    for (const dir of [cwd, home, tmp]) mkdirSync(dir);
    const databaseUrl = await freshDatabase();
    const secret = () => randomBytes(48).toString('base64');
    const service = await ServiceProcess.start(
      {
        NODE_ENV: 'production',
        HOME: home,
        TMPDIR: tmp,
        DATABASE_URL: databaseUrl,
        JWT_SECRET: secret(),
        PASSWORD_PEPPER: secret(),
        AUDIT_HMAC_KEY: secret(),
        KEY_ENCRYPTION_KEY: secret(),
        BCRYPT_COST: '10', // production's least
        LOG_LEVEL: 'verbose',
      },
      { cwd },
    );
    try {
      await service.ready();
      // Traffic that logs: requests, a failed login, a refused route, bad input, an error path.
      const user = newUserInput();
      assert.equal((await service.request('/api/v1/auth/register', { method: 'POST', body: user })).status, 201);
      assert.equal(
        (await service.request('/api/v1/auth/login', { method: 'POST', body: { email: user.email, password: 'wrong password here' } })).status,
        401,
      );
      const login = await service.request('/api/v1/auth/login', { method: 'POST', body: { email: user.email, password: user.password } });
      assert.equal(login.status, 200);
      const token = (login.body as { accessToken: string }).accessToken;
      assert.equal((await service.request('/api/v1/admin/audit', { token })).status, 403);
      assert.equal((await service.request('/api/v1/auth/login', { method: 'POST', body: { email: 1 } })).status, 400);
      assert.equal((await service.request('/api/v1/nowhere')).status, 404);
      assert.equal((await service.request('/api/v1/auth/logout', { method: 'POST', token })).status, 204);

      // While it runs: nothing open but its standard streams (pipes here), sockets, /dev/null and
      // the event loop's own descriptors.
      const open = openFiles(service.pid);
      const unexpected = open.filter((target) => !/^(pipe|socket|anon_inode):/.test(target) && target !== '/dev/null');
      assert.deepEqual(unexpected, [], `open: ${open.join(', ')}`);
    } finally {
      await service.stop();
    }
    // Nothing written where a process usually writes files.
    assert.deepEqual({ cwd: filesUnder(cwd), home: filesUnder(home), tmp: filesUnder(tmp) }, { cwd: [], home: [], tmp: [] });

    // The log data went to stdout (one JSON event a line)...
    const events = service.logs
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { message?: { event?: string; status?: number } });
    const requests = events.filter((e) => e.message?.event === 'request').map((e) => e.message!.status);
    assert.deepEqual([...new Set(requests)].sort(), [200, 201, 204, 400, 401, 403, 404]);
    // ...and to the audit events, in the database.
    const db = new Client({ connectionString: databaseUrl });
    await db.connect();
    try {
      const { rows } = await db.query<{ type: string }>(`SELECT type FROM audit_events WHERE user_id IS NOT NULL ORDER BY seq`);
      assert.deepEqual(
        rows.map((r) => r.type),
        ['REGISTER', 'LOGIN_FAILED', 'LOGIN', 'ACCESS_DENIED', 'LOGOUT'],
      );
    } finally {
      await db.end();
    }
  });
});
