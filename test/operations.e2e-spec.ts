import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { bearer, registerAndLogin } from './helpers/factories';
import { inCi } from './helpers/ci';
import { createTestApp, TestApp } from './helpers/test-app';
import { CapturingLogger } from './helpers/capturing-logger';
import { HealthController } from '../src/health/health.controller';
import { MetricsService } from '../src/metrics/metrics.service';
import { AuditCheckpointTask } from '../src/audit/audit-checkpoint.task';
import { AuditPartitionsTask } from '../src/audit/audit-partitions.task';
import { AuditService } from '../src/audit/audit.service';
import { KeyRotationTask } from '../src/keys/key-rotation.task';
import { RateLimitPruneTask } from '../src/rate-limit/rate-limit-prune.task';

describe('operations and error hygiene (e2e)', () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => {
    await t.close();
  });

  it('answers /health/live and /health/ready', async () => {
    assert.equal((await t.http.get('/health/live')).status, 200);
    const ready = await t.http.get('/health/ready');
    assert.equal(ready.status, 200);
    assert.equal(ready.body.status, 'ok');
  });

  it('answers /health/ready with 503 when the database does not answer, and logs why', async () => {
    const logs = new CapturingLogger();
    const down = await createTestApp({}, { logger: logs });
    try {
      const { tokens } = await registerAndLogin(down.http);
      await down.db.destroy();
      const res = await down.http.get('/health/ready');
      assert.equal(res.status, 503);
      assert.ok(!JSON.stringify(res.body).includes('postgres://'));
      assert.equal((await down.http.get('/health/live')).status, 200);
      const outage = logs.lines.find((l) => l.level === 'warn' && /GET \/health\/ready/.test(l.message));
      assert.match(outage?.message ?? JSON.stringify(logs.lines), /Not ready \(database: .+\)/);
      // Fails closed: without the database no session can be checked, so no request gets in.
      const me = await down.http.get('/api/v1/users/me').set('Authorization', `Bearer ${tokens.accessToken}`);
      assert.ok(me.status >= 500 && me.status < 600, String(me.status));
      assert.deepEqual(Object.keys(me.body).sort(), ['error', 'message', 'statusCode']);
    } finally {
      await down.app.close().catch(() => undefined);
    }
  });

  it('answers /health/ready with 503 from the first step of a shutdown (the HTTP server still answers for seconds), /health/live with 200; says so once', async () => {
    const logs = new CapturingLogger();
    const closing = await createTestApp({}, { logger: logs });
    try {
      assert.equal((await closing.http.get('/health/ready')).status, 200);
      // The hook Nest calls first when the app closes (SIGTERM), before the jobs stop and the server closes.
      closing.app.get(HealthController).onModuleDestroy();
      for (let probe = 0; probe < 3; probe++) {
        const res = await closing.http.get('/health/ready');
        assert.equal(res.status, 503);
        assert.equal(res.headers['retry-after'], '5');
      }
      assert.equal((await closing.http.get('/health/live')).status, 200);
      // One line for the drain, none per probe (a warning each until 0.21.0).
      assert.deepEqual(
        logs.lines.filter((l) => /shutting down|503 on GET \/health\/ready/i.test(l.message)).map((l) => `${l.level}: ${l.message}`),
        ['log: Shutting down: /health/ready answers 503 from now on'],
      );
    } finally {
      await closing.app.close().catch(() => undefined);
    }
  });

  // That each of them shuts down and ends the process by it: shutdown-deadline.e2e-spec.ts, on real processes.
  it('listens for SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGUSR2, and for no fault signal (the embedded PostgreSQL stops on the same list: tested there)', async () => {
    const signals = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR2', 'SIGABRT', 'SIGSEGV'] as const;
    const counts = () => Object.fromEntries(signals.map((s) => [s, process.listenerCount(s)]));
    const before = counts();
    const another = await createTestApp();
    try {
      const added = Object.fromEntries(signals.map((s) => [s, counts()[s] - before[s]]));
      assert.deepEqual(added, { SIGTERM: 1, SIGINT: 1, SIGHUP: 1, SIGQUIT: 1, SIGUSR2: 1, SIGABRT: 0, SIGSEGV: 0 });
    } finally {
      await another.app.close();
    }
  });

  it('starts no scheduled work once the shutdown began: a tick the scheduler fires before it stops (its hooks run last) does nothing', async () => {
    const logger = new CapturingLogger();
    const closing = await createTestApp({}, { logger });
    const checkpoint = closing.app.get(AuditCheckpointTask);
    const rotation = closing.app.get(KeyRotationTask);
    const partitions = closing.app.get(AuditPartitionsTask);
    const prune = closing.app.get(RateLimitPruneTask);
    const audit = closing.app.get(AuditService);
    assert.ok(audit.onAppended, 'checkpoints by count while it runs');
    await closing.close();
    const linesAtClose = logger.lines.length;
    // Each as the scheduler would fire it after the pool has closed (until 0.27.0 each ran, and
    // failed on the closed pool: a failure counted and a line logged).
    assert.equal(await checkpoint.handleTick(), undefined);
    await rotation.onTick();
    assert.equal(await partitions.handleTick(), undefined);
    assert.equal(await prune.prune(), 0);
    assert.equal(checkpoint.failures, 0);
    assert.equal(rotation.health.failures, 0);
    assert.deepEqual(logger.lines.slice(linesAtClose), []);
    assert.equal(audit.onAppended, undefined, 'the last events of a shutdown start no checkpoint');
  });

  it('serves Prometheus metrics', async () => {
    await t.http.get('/health/live');
    const res = await t.http.get('/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'], /^text\/plain/);
    assert.match(res.text, /sessionary_http_request_duration_seconds_bucket\{.*route="\/health\/live"/);
    assert.match(res.text, /process_cpu_user_seconds_total/);
  });

  it('documents every route, bearer auth and the error responses in /docs-json', async () => {
    const res = await t.http.get('/docs-json');
    assert.equal(res.status, 200);
    const doc = res.body;
    const routes = Object.entries(doc.paths as Record<string, Record<string, unknown>>).flatMap(([path, ops]) =>
      Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`),
    );
    for (const route of [
      'POST /api/v1/auth/register',
      'POST /api/v1/auth/login',
      'POST /api/v1/auth/refresh',
      'POST /api/v1/auth/logout',
      'GET /api/v1/users/me',
      'PATCH /api/v1/users/me',
      'GET /api/v1/audit',
      'PUT /api/v1/users/me/password',
      'GET /api/v1/sessions',
      'DELETE /api/v1/sessions',
      'DELETE /api/v1/sessions/{id}',
      'GET /api/v1/admin/users/{id}/sessions',
      'DELETE /api/v1/admin/users/{id}/sessions',
      'GET /api/v1/admin/audit',
      'GET /api/v1/admin/audit/verify',
      'GET /api/v1/admin/audit/export',
      'GET /health/live',
      'GET /health/ready',
      'GET /metrics',
      'GET /.well-known/jwks.json',
    ]) {
      assert.ok(routes.includes(route), `${route} is documented`);
    }
    assert.ok(doc.components.securitySchemes.bearer);
    assert.ok(doc.paths['/api/v1/users/me'].get.responses['401']);
    assert.ok(doc.paths['/api/v1/auth/register'].post.responses['409']);
    assert.ok(doc.paths['/api/v1/sessions/{id}'].delete.responses['404']);
    assert.ok(doc.paths['/api/v1/sessions/{id}'].delete.responses['400']);
    assert.ok(doc.paths['/api/v1/admin/audit'].get.responses['403']);
    assert.ok(doc.paths['/api/v1/users/me/password'].put.responses['401']);
    assert.ok(doc.paths['/api/v1/auth/login'].post.responses['429']);
    assert.ok(doc.paths['/api/v1/users/me/password'].put.responses['429']);
    // 503 + Retry-After wherever the database is needed; liveness and metrics never need it.
    assert.ok(doc.paths['/api/v1/users/me'].get.responses['503'].headers['Retry-After']);
    assert.ok(doc.paths['/api/v1/auth/login'].post.responses['503']);
    assert.ok(doc.paths['/health/ready'].get.responses['503']);
    assert.equal(doc.paths['/health/live'].get.responses['503'], undefined);
    // Every authenticated route declares bearer auth; every public one does not need it.
    for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, { security?: unknown[] }>>)) {
      for (const [method, op] of Object.entries(ops)) {
        const isPublic = /^\/(health|metrics|\.well-known)|\/auth\/(register|login|refresh)$/.test(path);
        assert.equal(Boolean(op.security?.length), !isPublic, `${method} ${path} security`);
      }
    }
    assert.ok(doc.components.schemas.RegisterDto.properties.password);
    assert.equal((await t.http.get('/docs')).status, 200);
  });

  it('names every operation with a unique, readable operationId (generated clients call them by it)', async () => {
    const doc = (await t.http.get('/docs-json')).body as { paths: Record<string, Record<string, { operationId?: string }>> };
    const ids = Object.values(doc.paths).flatMap((ops) => Object.values(ops).map((op) => op.operationId));
    assert.ok(ids.length >= 18, String(ids.length));
    // Nest's default would be `AuthController_login`.
    for (const id of ids) assert.match(id ?? '(none)', /^[a-z][A-Za-z]+$/);
    assert.equal(new Set(ids).size, ids.length, 'unique');
    assert.equal(doc.paths['/api/v1/users/me'].get.operationId, 'getMe');
    assert.equal(doc.paths['/api/v1/auth/login'].post.operationId, 'login');
    assert.equal(doc.paths['/api/v1/sessions'].get.operationId, 'listSessions');
  });

  it('states the whole contract in /docs-json: 413/415 on bodies, 429 and limit headers on /api/v1, closed request bodies, UUID ids, no empty description', async () => {
    type Ref = { $ref?: string };
    const doc = (await t.http.get('/docs-json')).body as {
      paths: Record<
        string,
        Record<
          string,
          {
            responses: Record<
              string,
              { description: string; headers?: Record<string, Ref>; content?: Record<string, { example?: { statusCode?: number } }> }
            >;
            parameters?: Array<{ in: string; name: string; schema: { format?: string; maxLength?: number } }>;
          }
        >
      >;
      components: {
        schemas: Record<string, { additionalProperties?: boolean }>;
        headers: Record<string, { schema: { format?: string; minimum?: number; maximum?: number } }>;
        securitySchemes: Record<string, { description?: string }>;
      };
      tags: Array<{ name: string; description: string }>;
    };
    const login = doc.paths['/api/v1/auth/login'].post.responses;
    for (const status of ['413', '415', '429', '500']) assert.ok(login[status], `login ${status}`);
    // The failed-login back-off's Retry-After can be longer than the request limit's.
    assert.equal(login['429'].headers?.['Retry-After'].$ref, '#/components/headers/Retry-After-Backoff');
    assert.ok(login['200'].headers?.['X-RateLimit-Remaining']);
    // Refusals by the route carry the limit's headers, and since 0.24.2 so do those Fastify gives before it (they count too).
    assert.ok(login['401'].headers?.['X-RateLimit-Remaining']);
    assert.ok(login['413'].headers?.['X-RateLimit-Remaining']);
    assert.ok(login['415'].headers?.['X-RateLimit-Remaining']);
    const me = doc.paths['/api/v1/users/me'].get.responses;
    assert.ok(me['429'] && !me['413'] && !me['415']);
    assert.equal(me['429'].headers?.['Retry-After'].$ref, '#/components/headers/Retry-After');
    assert.ok(me['429'].headers?.['X-RateLimit-Remaining']);
    assert.equal(doc.paths['/health/live'].get.responses['429'], undefined);
    assert.equal(doc.paths['/health/live'].get.responses['200'].headers?.['X-RateLimit-Remaining'], undefined);
    // The per-IP window is a minute; the limit itself is RATE_LIMIT_PER_MINUTE's int32.
    assert.deepEqual(doc.components.headers['X-RateLimit-Reset'].schema, { type: 'integer', format: 'int32', minimum: 0, maximum: 60 });
    assert.equal(doc.components.headers['X-RateLimit-Limit'].schema.maximum, 2147483647);
    assert.match(doc.components.securitySchemes.bearer.description ?? '', /RFC8725/);
    for (const dto of ['RegisterDto', 'LoginDto', 'RefreshDto', 'ChangePasswordDto', 'UpdateProfileDto']) {
      assert.equal(doc.components.schemas[dto].additionalProperties, false, dto);
    }
    const id = doc.paths['/api/v1/sessions/{id}'].delete.parameters?.find((p) => p.in === 'path' && p.name === 'id');
    assert.equal(id?.schema.format, 'uuid');
    assert.equal(id?.schema.maxLength, 36);
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        assert.ok(op.responses['500'], `${method} ${path} 500`);
        for (const [status, response] of Object.entries(op.responses)) {
          assert.ok(response.description, `${method} ${path} ${status} has a description`);
          // @fastify/cors labels every answer for the origins CORS_ORIGINS lists.
          assert.ok(response.headers?.['Access-Control-Allow-Origin'], `${method} ${path} ${status} Access-Control-Allow-Origin`);
          const example = response.content?.['application/json']?.example;
          if (Number(status) >= 400 && example) assert.equal(example.statusCode, Number(status), `${method} ${path} ${status} example`);
        }
      }
    }
    assert.ok(doc.tags.find((tag) => tag.name === 'auth')?.description);
  });

  it('serves exactly the committed openapi.json (UPDATE_OPENAPI=1 npm test -- operations rewrites it)', async (test) => {
    const served = `${JSON.stringify((await t.http.get('/docs-json')).body, null, 2)}\n`;
    const file = join(__dirname, '..', '..', 'openapi.json');
    if (process.env.UPDATE_OPENAPI) {
      // A rewrite checks nothing (the file is then what was served): never in CI, and reported as a skip.
      assert.ok(!inCi(), 'UPDATE_OPENAPI rewrites openapi.json: not in CI');
      writeFileSync(file, served);
      test.skip('openapi.json rewritten from the served document: review its diff');
      return;
    }
    assert.ok(
      served === readFileSync(file, 'utf8'),
      'the served document differs from openapi.json: run `UPDATE_OPENAPI=1 npm test -- operations` and review the diff',
    );
  });

  it("runs the document's register and login examples as they are: 201, then 200 by either identifier", async () => {
    const doc = (await t.http.get('/docs-json')).body;
    // Swagger UI builds a body from the schema's property examples.
    const registerSchema = doc.components.schemas.RegisterDto as { properties: Record<string, { example?: unknown }>; required: string[] };
    const registerBody = Object.fromEntries(Object.entries(registerSchema.properties).map(([name, p]) => [name, p.example]));
    for (const name of registerSchema.required) assert.notEqual(registerBody[name], undefined, `RegisterDto.${name} has an example`);
    const registered = await t.http.post('/api/v1/auth/register').send(registerBody);
    assert.equal(registered.status, 201, JSON.stringify(registered.body));
    const examples = doc.paths['/api/v1/auth/login'].post.requestBody.content['application/json'].examples as Record<string, { value: object }>;
    assert.ok(Object.keys(examples).length >= 2);
    for (const [name, { value }] of Object.entries(examples)) {
      const loggedIn = await t.http.post('/api/v1/auth/login').send(value);
      assert.equal(loggedIn.status, 200, `login example ${name}: ${JSON.stringify(loggedIn.body)}`);
      assert.equal(typeof loggedIn.body.accessToken, 'string');
    }
  });

  it('with METRICS_TOKEN, serves /metrics only to that bearer token: 401 and the RFC 6750 challenge otherwise, documented', async () => {
    const token = randomBytes(32).toString('base64url');
    const guarded = await createTestApp({ METRICS_TOKEN: token });
    try {
      const refused = [
        [undefined, 'Bearer'],
        [`Bearer ${token.slice(0, -1)}`, 'Bearer error="invalid_token"'],
        [`Bearer ${token}x`, 'Bearer error="invalid_token"'],
        [`Basic ${token}`, 'Bearer error="invalid_token"'],
        [token, 'Bearer error="invalid_token"'],
        [`Bearer ${t.config.JWT_SECRET}`, 'Bearer error="invalid_token"'],
      ] as const;
      for (const [authorization, challenge] of refused) {
        const req = guarded.http.get('/metrics');
        const res = await (authorization === undefined ? req : req.set('Authorization', authorization));
        assert.equal(res.status, 401, String(authorization));
        assert.equal(res.headers['www-authenticate'], challenge);
        assert.deepEqual(res.body, { statusCode: 401, error: 'Unauthorized', message: 'A valid metrics token is required' });
        assert.ok(!res.text.includes('sessionary_'), 'no metric in the answer');
      }
      for (const scheme of ['Bearer', 'bearer']) {
        const res = await guarded.http.get('/metrics').set('Authorization', `${scheme} ${token}`);
        assert.equal(res.status, 200, scheme);
        assert.match(res.text, /process_cpu_user_seconds_total/);
      }
      // The probes stay open: a balancer sends no token.
      assert.equal((await guarded.http.get('/health/live')).status, 200);
      const scrape = (await guarded.http.get('/docs-json')).body as {
        paths: Record<string, { get: { security?: unknown; responses: Record<string, unknown> } }>;
        components: { securitySchemes: Record<string, { type: string; scheme: string }> };
      };
      assert.deepEqual(scrape.paths['/metrics'].get.security, [{ metricsToken: [] }]);
      assert.ok(scrape.paths['/metrics'].get.responses['401']);
      assert.deepEqual(
        [scrape.components.securitySchemes.metricsToken.type, scrape.components.securitySchemes.metricsToken.scheme],
        ['http', 'bearer'],
      );
      assert.equal(scrape.paths['/health/live'].get.security, undefined);
      // Without it (t), /metrics stays open and documented as such.
      const open = (await t.http.get('/docs-json')).body as typeof scrape;
      assert.equal(open.paths['/metrics'].get.security, undefined);
      assert.equal(open.components.securitySchemes.metricsToken, undefined);
    } finally {
      await guarded.close();
    }
  });

  it('serves no docs and no metrics when DOCS_ENABLED and METRICS_ENABLED are false', async () => {
    const closed = await createTestApp({ DOCS_ENABLED: 'false', METRICS_ENABLED: 'false' });
    try {
      for (const path of ['/docs', '/docs-json', '/metrics']) assert.equal((await closed.http.get(path)).status, 404, path);
      assert.equal((await closed.http.get('/health/live')).status, 200);
      // Nor does it measure the process for a route that is not there (prom-client's event-loop monitor and GC observer).
      assert.equal(closed.app.get(MetricsService).registry.getSingleMetric('nodejs_eventloop_lag_p99_seconds'), undefined);
      assert.ok(t.app.get(MetricsService).registry.getSingleMetric('nodejs_eventloop_lag_p99_seconds'), 'measured when enabled');
    } finally {
      await closed.close();
    }
  });

  it('leaves /metrics out of the document when METRICS_ENABLED is false (it answers 404 then)', async () => {
    const noMetrics = await createTestApp({ METRICS_ENABLED: 'false', JWT_SECRET: t.config.JWT_SECRET, PASSWORD_PEPPER: t.config.PASSWORD_PEPPER });
    try {
      const paths = Object.keys((await noMetrics.http.get('/docs-json')).body.paths);
      assert.ok(paths.includes('/health/live'), paths.join(' '));
      assert.ok(!paths.includes('/metrics'), paths.join(' '));
      assert.equal((await noMetrics.http.get('/metrics')).status, 404);
      assert.ok(Object.keys((await t.http.get('/docs-json')).body.paths).includes('/metrics'), 'documented when enabled');
    } finally {
      await noMetrics.close();
    }
  });

  it('answers unknown routes with a 404 in the error shape', async () => {
    const res = await t.http.get('/api/v1/nope');
    assert.equal(res.status, 404);
    assert.equal(res.body.statusCode, 404);
  });

  it('refuses request bodies over 16 KiB with 413 and wrong content types with 415', async () => {
    const big = await t.http.post('/api/v1/auth/register').send({ username: 'x'.repeat(17 * 1024) });
    assert.equal(big.status, 413);
    assert.deepEqual(Object.keys(big.body).sort(), ['error', 'message', 'statusCode']);
    const xml = await t.http.post('/api/v1/auth/login').set('Content-Type', 'application/xml').send('<login/>');
    assert.equal(xml.status, 415);
  });

  it('never answers with a stack trace, SQL or a password hash', async () => {
    const { tokens } = await registerAndLogin(t.http);
    const responses = await Promise.all([
      t.http.post('/api/v1/auth/register').set('Content-Type', 'application/json').send('{"a":'),
      t.http.post('/api/v1/auth/register').send({ username: "x'; DROP TABLE users;--", email: 'a@b.c', password: 'x'.repeat(20) }),
      t.http.post('/api/v1/auth/login').send({ email: "' OR 1=1 --@x.io", password: 'x' }),
      t.http.post('/api/v1/auth/refresh').send({ refreshToken: { $ne: null } }),
      t.http.get('/api/v1/audit?cursor=%00%00').set('Authorization', bearer(tokens)),
      t.http.get('/api/v1/users/me').set('Authorization', 'Bearer a.b.c'),
      t.http.get('/api/v1/users/me').set('Authorization', bearer(tokens)),
    ]);
    for (const res of responses) {
      assert.ok(res.status < 500, `${res.status} ${res.text}`);
      for (const leak of [/\$2[aby]\$/, /\bat \S+ \(/, /QueryFailedError|SELECT |INSERT |driverError/i, /node_modules/]) {
        assert.doesNotMatch(res.text, leak);
      }
    }
  });
});
