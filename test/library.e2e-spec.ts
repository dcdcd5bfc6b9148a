import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import {
  ArgumentsHost,
  Body,
  Catch,
  Controller,
  ExceptionFilter,
  Get,
  Injectable,
  type LoggerService,
  Module,
  Post,
  Req,
  UseGuards,
} from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { OnEvent } from '@nestjs/event-emitter';
import { AuthGuard, PassportModule, PassportStrategy } from '@nestjs/passport';
import { JwtModule, JwtService } from '@nestjs/jwt';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Cron, ScheduleModule, SchedulerRegistry } from '@nestjs/schedule';
import { HealthCheck, HealthCheckService, TerminusModule } from '@nestjs/terminus';
import { IsString } from 'class-validator';
import { ClientProxy, ClientProxyFactory, MessagePattern, Payload, RpcException, Transport } from '@nestjs/microservices';
import { Test } from '@nestjs/testing';
import { InjectDataSource, TypeOrmModule } from '@nestjs/typeorm';
import * as jwt from 'jsonwebtoken';
import { firstValueFrom, timeout } from 'rxjs';
import { ExtractJwt, Strategy } from 'passport-jwt';
import { Client } from 'pg';
import request from 'supertest';
import type { DataSource } from 'typeorm';
// The package's entry point, as a host application imports it.
import {
  AccountsService,
  AUTH_CONTEXT_KEY,
  AuditService,
  CurrentAuth,
  IS_PUBLIC_KEY,
  KeyRotationService,
  Public,
  SESSIONARY_DATA_SOURCE_TOKEN,
  SessionaryModule,
  SessionsService,
  UsersService,
  type AuditEventType,
  type AuthContext,
  type SessionEndedEvent,
  type UserRegisteredEvent,
} from '../src/index';
import { AuditVerifierService } from '../src/audit/audit-verifier.service';
import { SESSIONARY_CRON_JOBS } from '../src/sessionary/scheduled-jobs';
import { AuditPartitionsTask } from '../src/audit/audit-partitions.task';
import { KeyRotationTask } from '../src/keys/key-rotation.task';
import { LoginThrottleService } from '../src/login-throttle/login-throttle.service';
import { RateLimitPruneTask } from '../src/rate-limit/rate-limit-prune.task';
import { SessionsCleanupTask } from '../src/sessions/sessions-cleanup.task';
import { findFreePort } from '../src/database/embedded-postgres';
import { CapturingLogger } from './helpers/capturing-logger';
import { newUserInput } from './helpers/factories';
import { emptyDatabase } from './helpers/test-app';

// The host application of issue 9, as written there.
@Controller('orders')
class OrdersController {
  constructor(private readonly users: UsersService) {}
  @Get() mine(@CurrentAuth() auth: AuthContext) {
    return { userId: auth.userId, sessionId: auth.sessionId };
  }
  /** A host that answers with Sessionary's user entity as it is. */
  @Get('customer') customer(@CurrentAuth() auth: AuthContext) {
    return this.users.getById(auth.userId);
  }
  @Public() @Get('catalog') catalog() {
    return [];
  }
}

@Injectable()
class Listener {
  ended: SessionEndedEvent[] = [];
  registered: UserRegisteredEvent[] = [];
  @OnEvent('session.ended') onEnded(e: SessionEndedEvent) {
    this.ended.push(e);
  }
  @OnEvent('user.registered') onRegistered(e: UserRegisteredEvent) {
    this.registered.push(e);
  }
}

/** The host's own data, through its own default TypeORM data source. */
@Injectable()
class HostStore {
  constructor(@InjectDataSource() readonly dataSource: DataSource) {}
}

/** The host's own scheduled job: the second of each run. */
@Injectable()
class HostJob {
  ranAt: number[] = [];
  @Cron('* * * * * *', { name: 'host-job' }) run() {
    this.ranAt.push(Math.floor(Date.now() / 1000));
  }
  /** A host's job named as Sessionary's cleanup was until 0.22.0 (then DUPLICATE_SCHEDULER at boot). */
  @Cron('0 0 1 1 *', { name: 'sessions-cleanup' }) yearly() {}
}

const secret = () => randomBytes(48).toString('base64');
const secrets = { jwtSecret: secret(), passwordPepper: secret(), auditHmacKey: secret() };

// The host's own tokens, checked by its own passport-jwt strategy under passport's default name
// 'jwt' (as Nest's documentation writes one), on a route of its own that Sessionary leaves alone.
const hostSecret = secret();

@Injectable()
class HostJwtStrategy extends PassportStrategy(Strategy) {
  constructor() {
    super({ jwtFromRequest: ExtractJwt.fromAuthHeaderAsBearerToken(), secretOrKey: hostSecret, algorithms: ['HS256'] });
  }
  validate(payload: { sub: string }) {
    return { hostUser: payload.sub };
  }
}

/** A host's body class checked its own way (a zod schema's class, a pipe of its own): no class-validator rule. */
class HostNoteBody {
  text!: string;
}

/** A host's body class with class-validator rules. */
class HostRuledBody {
  @IsString() text!: string;
}

/** The host's own health check (its own TerminusModule) and tokens (its own global JwtModule). */
@Controller('host')
class HostOwnController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly jwt: JwtService,
  ) {}
  @Public() @Get('health') @HealthCheck() check() {
    return this.health.check([() => Promise.resolve({ orders: { status: 'up' as const } })]);
  }
  @Public() @Get('token') token() {
    return { token: this.jwt.sign({ sub: 'host-user-2' }) };
  }
  @Public() @Post('notes') note(@Body() body: HostNoteBody) {
    return { received: body, plain: Object.getPrototypeOf(body) === Object.prototype };
  }
  @Public() @Post('ruled') ruled(@Body() body: HostRuledBody) {
    return { received: body, instance: body instanceof HostRuledBody };
  }
}

/** A host's own error, and the filters a host writes for its errors. */
class OrderLockedError extends Error {}

@Catch(OrderLockedError)
class OrderLockedFilter implements ExceptionFilter {
  catch(_: OrderLockedError, host: ArgumentsHost) {
    void host.switchToHttp().getResponse<{ code(n: number): { send(b: unknown): void } }>().code(423).send({ code: 'ORDER_LOCKED' });
  }
}

@Catch()
class HostCatchAll implements ExceptionFilter {
  catch(_: unknown, host: ArgumentsHost) {
    void host.switchToHttp().getResponse<{ code(n: number): { send(b: unknown): void } }>().code(418).send({ host: 'caught it' });
  }
}

@Controller('locked')
class LockedOrderController {
  @Public() @Get() locked() {
    throw new OrderLockedError();
  }
}

@Controller('legacy')
class LegacyController {
  @Public() @UseGuards(AuthGuard('jwt')) @Get() who(@Req() req: { user: unknown }) {
    return req.user;
  }
}

/**
 * A Sessionary app on a database of its own, in this process, as a host builds one: with the
 * scheduler imported once by the host's root module unless `scheduler` is false.
 */
async function sessionaryApp(
  imports: unknown[] = [],
  controllers: unknown[] = [],
  providers: unknown[] = [],
  {
    scheduler = true,
    scheduledJobs,
    databaseUrl,
    routePrefix = 'api/v1',
    globalPrefix,
    globalExceptionFilter,
    hostGlobalFilter,
    microservicePort,
    logger,
    options,
  }: {
    scheduler?: boolean;
    scheduledJobs?: boolean;
    databaseUrl?: string;
    routePrefix?: string;
    globalPrefix?: { prefix: string; exclude: string[] };
    globalExceptionFilter?: boolean;
    /** A filter the host adds with app.useGlobalFilters(). */
    hostGlobalFilter?: ExceptionFilter;
    /** A hybrid app: the host's microservice on this TCP port beside its HTTP routes (inheritAppConfig: Sessionary's guards, pipe and filter apply to it). */
    microservicePort?: number;
    logger?: LoggerService;
    /** Sessionary's options over the ones here. */
    options?: Record<string, unknown>;
  } = {},
): Promise<NestFastifyApplication> {
  databaseUrl ??= await emptyDatabase();
  @Module({
    imports: [
      ...(scheduler ? [ScheduleModule.forRoot()] : []),
      ...(imports as []),
      SessionaryModule.forRootAsync({
        useFactory: () => ({ databaseUrl, ...secrets, routePrefix, nodeEnv: 'test', bcryptCost: 4, rateLimitPerMinute: 0, ...options }),
        scheduledJobs,
        globalExceptionFilter,
      }),
    ],
    controllers: controllers as [],
    providers: providers as [],
  })
  class HostModule {}
  const moduleRef = await Test.createTestingModule({ imports: [HostModule] }).compile();
  // The host's own app: Fastify, no global prefix, none of Sessionary's app setup.
  const app = moduleRef.createNestApplication<NestFastifyApplication>(new FastifyAdapter(), logger ? { logger } : undefined);
  if (globalPrefix) app.setGlobalPrefix(globalPrefix.prefix, { exclude: globalPrefix.exclude });
  if (hostGlobalFilter) app.useGlobalFilters(hostGlobalFilter);
  if (microservicePort)
    app.connectMicroservice({ transport: Transport.TCP, options: { host: '127.0.0.1', port: microservicePort } }, { inheritAppConfig: true });
  try {
    await app.init();
    if (microservicePort) await app.startAllMicroservices();
  } catch (error) {
    await app.close(); // a refused boot leaves nothing open
    throw error;
  }
  await app.getHttpAdapter().getInstance().ready();
  return app;
}

async function signedIn(http: ReturnType<typeof request>): Promise<string> {
  const user = newUserInput();
  assert.equal((await http.post('/api/v1/auth/register').send(user)).status, 201);
  const login = await http.post('/api/v1/auth/login').send({ email: user.email, password: user.password });
  assert.equal(login.status, 200);
  return (login.body as { accessToken: string }).accessToken;
}

describe('Sessionary inside a host Nest app (e2e)', () => {
  let app: NestFastifyApplication;
  let http: ReturnType<typeof request>;

  before(async () => {
    app = await sessionaryApp(
      [
        // The host's own global configuration, with names Sessionary uses too: neither sees the other's.
        ConfigModule.forRoot({ isGlobal: true, ignoreEnvFile: true, load: [() => ({ JWT_ISSUER: 'the-host', SESSION_IDLE_TTL: 1 })] }),
        PassportModule,
        // The host's own tokens and health checks, global or not.
        JwtModule.register({ global: true, secret: hostSecret, signOptions: { algorithm: 'HS256', expiresIn: 60 } }),
        TerminusModule,
        // The host's own database, as its default data source (imported before Sessionary).
        TypeOrmModule.forRootAsync({ useFactory: async () => ({ type: 'postgres', url: await emptyDatabase() }) }),
      ],
      [OrdersController, LegacyController, HostOwnController],
      [Listener, HostJwtStrategy, HostJob, HostStore],
    );
    http = request(app.getHttpServer());
  });
  after(async () => {
    await app.close();
  });

  it("serves API.md's routes under routePrefix, protects the host's routes, and tells the host's listener of a logout", async () => {
    assert.equal((await http.get('/orders')).status, 401, 'a host route without a token');
    assert.deepEqual((await http.get('/orders/catalog')).body, [], 'a @Public() host route');

    const user = newUserInput();
    assert.equal((await http.post('/api/v1/auth/register').send(user)).status, 201);
    const login = await http.post('/api/v1/auth/login').send({ email: user.email, password: user.password });
    assert.equal(login.status, 200);
    const { accessToken, sessionId } = login.body as { accessToken: string; sessionId: string };
    const claims = JSON.parse(Buffer.from(accessToken.split('.')[1], 'base64url').toString('utf8')) as { iss: string };
    assert.equal(claims.iss, 'sessionary', "Sessionary's own setting, not the host's JWT_ISSUER");
    const me = await http.get('/api/v1/users/me').set('Authorization', `Bearer ${accessToken}`);
    assert.equal(me.status, 200);
    const userId = (me.body as { id: string }).id;

    const mine = await http.get('/orders').set('Authorization', `Bearer ${accessToken}`);
    assert.equal(mine.status, 200);
    assert.deepEqual(mine.body, { userId, sessionId });
    // A host route that returns the stored user as it is serves every column but the password hash.
    const customer = await http.get('/orders/customer').set('Authorization', `Bearer ${accessToken}`);
    assert.equal(customer.status, 200);
    assert.deepEqual(Object.keys(customer.body as object).sort(), ['createdAt', 'email', 'id', 'role', 'updatedAt', 'username']);

    assert.equal((await http.post('/api/v1/auth/logout').set('Authorization', `Bearer ${accessToken}`)).status, 204);
    assert.deepEqual(
      app.get(Listener).ended.map((e) => [e.sessionId, e.reason]),
      [[sessionId, 'logout']],
    );
    assert.equal((await http.get('/orders').set('Authorization', `Bearer ${accessToken}`)).status, 401, 'the ended session is refused at once');
  });

  it("leaves the host's body classes without class-validator rules to the host, and validates those with rules as its own", async () => {
    const note = { text: 42, tags: ['x'], nested: { any: 'thing' } };
    const notes = await http.post('/host/notes').send(note);
    assert.equal(notes.status, 201, JSON.stringify(notes.body));
    assert.deepEqual(notes.body, { received: note, plain: true });

    const ruled = await http.post('/host/ruled').send({ text: 'a' });
    assert.equal(ruled.status, 201);
    assert.deepEqual(ruled.body, { received: { text: 'a' }, instance: true });
    assert.equal((await http.post('/host/ruled').send({ text: 'a', extra: 1 })).status, 400, 'an unknown property');
    assert.equal((await http.post('/host/ruled').send({ text: 1 })).status, 400, 'a broken rule');
  });

  it("refuses a form-encoded or other non-JSON body on its routes with 415, though the host's app parses forms; the host's routes keep them", async () => {
    const user = newUserInput();
    // A plain HTML form on any web page posts this, without a CORS preflight (until 0.29.0: 201, then 200).
    const form = new URLSearchParams({ username: user.username, email: user.email, password: user.password }).toString();
    const registered = await http.post('/api/v1/auth/register').type('form').send(form);
    assert.equal(registered.status, 415, JSON.stringify(registered.body));
    assert.deepEqual(registered.body, {
      statusCode: 415,
      error: 'Unsupported Media Type',
      message: 'Unsupported content type; send application/json',
    });
    const loginForm = new URLSearchParams({ email: user.email, password: user.password }).toString();
    assert.equal((await http.post('/api/v1/auth/login').type('form').send(loginForm)).status, 415);
    assert.equal((await http.post('/api/v1/auth/login').set('Content-Type', 'text/plain').send(JSON.stringify(user))).status, 415);
    // Nothing was made: the account does not exist.
    assert.equal((await http.post('/api/v1/auth/login').send({ email: user.email, password: user.password })).status, 401);
    // JSON with parameters or in capitals is JSON; a body-less request passes whatever type it names.
    const json = await http.post('/api/v1/auth/register').set('Content-Type', 'Application/JSON; charset=utf-8').send(JSON.stringify(user));
    assert.equal(json.status, 201, JSON.stringify(json.body));
    const token = (await http.post('/api/v1/auth/login').send({ email: user.email, password: user.password }).expect(200)).body.accessToken as string;
    assert.equal(
      (await http.get('/api/v1/auth/session').set('Authorization', `Bearer ${token}`).set('Content-Type', 'application/x-www-form-urlencoded'))
        .status,
      200,
    );
    // The host's own route takes the form its app parses.
    const note = await http.post('/host/notes').type('form').send('text=hello');
    assert.equal(note.status, 201, JSON.stringify(note.body));
    assert.deepEqual(note.body.received, { text: 'hello' });
  });

  it("keeps the host's default TypeORM data source the host's, and its own database its own", async () => {
    const databaseOf = async (dataSource: DataSource) =>
      ((await dataSource.query('SELECT current_database() AS name')) as Array<{ name: string }>)[0].name;
    const hostDatabase = await databaseOf(app.get(HostStore).dataSource);
    const sessionaryDatabase = await databaseOf(app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN));
    assert.notEqual(hostDatabase, sessionaryDatabase);
    assert.equal(((await app.get(HostStore).dataSource.query(`SELECT to_regclass('sessions') AS t`)) as Array<{ t: string | null }>)[0].t, null);
    const token = await signedIn(http);
    assert.equal((await http.get('/api/v1/users/me').set('Authorization', `Bearer ${token}`)).status, 200);
    // Readiness pings Sessionary's database, not the default data source: with the host's closed, still 200.
    await app.get(HostStore).dataSource.destroy();
    assert.equal((await http.get('/health/ready')).status, 200);
  });

  it("shares the host's database from a schema of its own (search_path in databaseUrl), beside the host's users and migrations tables", async () => {
    const hostUrl = await emptyDatabase();
    const host = new Client({ connectionString: hostUrl });
    await host.connect();
    try {
      // The host's own tables, with the names Sessionary's have, and the schema Sessionary gets.
      await host.query(`CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL)`);
      await host.query(`CREATE TABLE migrations (id serial PRIMARY KEY, "timestamp" bigint NOT NULL, name varchar NOT NULL)`);
      await host.query(`INSERT INTO users (name) VALUES ('the host''s user')`);
      await host.query(`INSERT INTO migrations ("timestamp", name) VALUES (1, 'HostInit1')`);
      await host.query(`CREATE SCHEMA sessionary`);
      const shared = await sessionaryApp([], [], [], { databaseUrl: `${hostUrl}?options=${encodeURIComponent('-c search_path=sessionary')}` });
      try {
        const sharedHttp = request(shared.getHttpServer());
        const token = await signedIn(sharedHttp);
        assert.equal((await sharedHttp.get('/api/v1/users/me').set('Authorization', `Bearer ${token}`)).status, 200);
        assert.equal((await sharedHttp.get('/health/ready')).status, 200);
        const verification = await shared.get(AuditVerifierService).verify();
        assert.deepEqual({ ok: verification.ok, reason: verification.reason }, { ok: true, reason: null });
      } finally {
        await shared.close();
      }
      const count = async (table: string) =>
        ((await host.query(`SELECT count(*)::int AS n FROM ${table}`)) as { rows: Array<{ n: number }> }).rows[0].n;
      assert.deepEqual((await host.query(`SELECT name FROM public.users`)).rows, [{ name: "the host's user" }]);
      assert.equal(await count('public.migrations'), 1, "the host's migrations table untouched");
      assert.equal(await count('sessionary.users'), 1);
      assert.ok((await count('sessionary.migrations')) > 1, "Sessionary's migrations in its own table");
      assert.ok((await count('sessionary.audit_events')) > 0);
    } finally {
      await host.end();
    }
  });

  it("leaves the host's own passport 'jwt' strategy to the host's routes, and uses only its own", async () => {
    const hostToken = jwt.sign({ sub: 'host-user-1' }, hostSecret, { algorithm: 'HS256', expiresIn: 60 });
    const sessionaryToken = await signedIn(http);
    const as = (token: string) => `Bearer ${token}`;
    assert.deepEqual((await http.get('/legacy').set('Authorization', as(hostToken))).body, { hostUser: 'host-user-1' });
    assert.equal((await http.get('/legacy').set('Authorization', as(sessionaryToken))).status, 401, "Sessionary's token on the host's guard");
    assert.equal((await http.get('/orders').set('Authorization', as(sessionaryToken))).status, 200);
    assert.equal((await http.get('/api/v1/users/me').set('Authorization', as(sessionaryToken))).status, 200);
    assert.equal((await http.get('/orders').set('Authorization', as(hostToken))).status, 401, "the host's token on Sessionary's guard");
  });

  it("leaves the host's own global JwtModule and its TerminusModule to the host", async () => {
    const hostHealth = await http.get('/host/health');
    assert.deepEqual([hostHealth.status, (hostHealth.body as { details: unknown }).details], [200, { orders: { status: 'up' } }]);
    assert.equal((await http.get('/health/ready')).status, 200);
    // The host's JwtService signs with the host's secret; Sessionary's tokens keep its own keys and claims.
    const hostToken = ((await http.get('/host/token')).body as { token: string }).token;
    assert.deepEqual((await http.get('/legacy').set('Authorization', `Bearer ${hostToken}`)).body, { hostUser: 'host-user-2' });
    assert.equal((await http.get('/orders').set('Authorization', `Bearer ${hostToken}`)).status, 401);
    const sessionaryToken = await signedIn(http);
    assert.equal(JSON.parse(Buffer.from(sessionaryToken.split('.')[0], 'base64url').toString('utf8')).alg, 'ES256');
    assert.equal((await http.get('/orders').set('Authorization', `Bearer ${sessionaryToken}`)).status, 200);
  });

  it("serves under the host's global prefix, and keeps probes, metrics and JWKS at the root when the host excludes them", async () => {
    const prefixed = await sessionaryApp([], [OrdersController], [], {
      routePrefix: 'v1',
      globalPrefix: { prefix: 'api', exclude: ['health/live', 'health/ready', 'metrics', '.well-known/jwks.json'] },
    });
    try {
      const prefixedHttp = request(prefixed.getHttpServer());
      const user = newUserInput();
      assert.equal((await prefixedHttp.post('/api/v1/auth/register').send(user)).status, 201);
      const login = await prefixedHttp.post('/api/v1/auth/login').send({ email: user.email, password: user.password });
      const token = (login.body as { accessToken: string }).accessToken;
      assert.equal((await prefixedHttp.get('/api/orders').set('Authorization', `Bearer ${token}`)).status, 200);
      assert.equal((await prefixedHttp.get('/api/orders')).status, 401, "the guard protects the host's prefixed routes");
      for (const path of ['/health/live', '/health/ready', '/metrics', '/.well-known/jwks.json']) {
        assert.equal((await prefixedHttp.get(path)).status, 200, path);
        assert.equal((await prefixedHttp.get(`/api${path}`)).status, 404, `/api${path}`);
      }
    } finally {
      await prefixed.close();
    }
  });

  it('keeps verifying with its own keys when a second Sessionary app is built in the same process', async () => {
    const before = await signedIn(http);
    const second = await sessionaryApp();
    try {
      const secondHttp = request(second.getHttpServer());
      const theirs = await signedIn(secondHttp);
      const mine = await signedIn(http);
      for (const token of [before, mine]) {
        assert.equal((await http.get('/api/v1/users/me').set('Authorization', `Bearer ${token}`)).status, 200, 'the first app, its own token');
        assert.equal(
          (await secondHttp.get('/api/v1/users/me').set('Authorization', `Bearer ${token}`)).status,
          401,
          "the second app, the first's token",
        );
      }
      assert.equal((await secondHttp.get('/api/v1/users/me').set('Authorization', `Bearer ${theirs}`)).status, 200, 'the second app, its own token');
      assert.equal((await http.get('/api/v1/users/me').set('Authorization', `Bearer ${theirs}`)).status, 401, "the first app, the second's token");
    } finally {
      await second.close();
    }
    assert.equal((await http.get('/api/v1/users/me').set('Authorization', `Bearer ${before}`)).status, 200, 'after the second app closed');
  });

  it("runs the host's own @Cron job once a tick, beside its own jobs in the host's scheduler", async () => {
    const job = app.get(HostJob);
    const deadline = Date.now() + 10_000;
    while (job.ranAt.length < 3) {
      assert.ok(Date.now() < deadline, `the host's job ran ${job.ranAt.length} times in 10 s`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    // Each second once: a second scheduler (a ScheduleModule.forRoot() of Sessionary's own)
    // would run it twice in the same second.
    assert.deepEqual(job.ranAt, [...new Set(job.ranAt)], `runs at ${job.ranAt.join(', ')}`);
    assert.deepEqual(
      [...app.get(SchedulerRegistry).getCronJobs().keys()].sort(),
      ['host-job', 'sessions-cleanup', ...Object.values(SESSIONARY_CRON_JOBS)].sort(),
      "a host's job may take any name: Sessionary's are prefixed",
    );
    for (const name of Object.values(SESSIONARY_CRON_JOBS)) assert.match(name, /^sessionary:/);
  });

  it("registers and logs users in from the host's own code with the routes' rules, limits and events (AccountsService)", async () => {
    const accounts = app.get(AccountsService);
    const dataSource = app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN);
    const client = { ipAddress: '192.0.2.10', userAgent: 'host-invite/1' };
    const input = newUserInput();
    const profile = await accounts.register(input, client);
    assert.deepEqual(Object.keys(profile).sort(), ['createdAt', 'email', 'id', 'role', 'updatedAt', 'username']);
    assert.equal(profile.email, input.email);
    const events = async (type: string) =>
      (await dataSource.query(`SELECT ip_address, user_agent FROM audit_events WHERE user_id = $1 AND type = $2`, [profile.id, type])) as Array<{
        ip_address: string;
        user_agent: string;
      }>;
    assert.deepEqual(await events('REGISTER'), [{ ip_address: client.ipAddress, user_agent: client.userAgent }]);
    assert.deepEqual(
      app
        .get(Listener)
        .registered.filter((e) => e.userId === profile.id)
        .map((e) => e.ipAddress),
      [client.ipAddress],
    );
    // The password was hashed as the route hashes it: the user logs in over HTTP.
    assert.equal((await http.post('/api/v1/auth/login').send({ email: input.email, password: input.password })).status, 200);

    const tokens = await accounts.login({ username: input.username, password: input.password }, client);
    assert.equal(tokens.tokenType, 'Bearer');
    assert.deepEqual(
      ((await http.get('/orders').set('Authorization', `Bearer ${tokens.accessToken}`)).body as { userId: string }).userId,
      profile.id,
    );
    // A client as a host may pass it, bounded as a request's is: no control characters, the columns' lengths.
    await accounts.login(
      { email: input.email, password: input.password },
      { ipAddress: '2001:db8::1'.padEnd(80, '0'), userAgent: `forged\nline ${'x'.repeat(600)}` },
    );
    const logins = await events('LOGIN');
    assert.equal(logins.length, 3, 'the HTTP login and these two');
    const bounded = logins.find((e) => e.user_agent?.startsWith('forged'));
    assert.ok(
      bounded && bounded.ip_address.length === 64 && bounded.user_agent.length === 512 && !bounded.user_agent.includes('\n'),
      JSON.stringify(bounded),
    );
    assert.deepEqual(
      logins.filter((e) => e.ip_address === client.ipAddress),
      [{ ip_address: client.ipAddress, user_agent: client.userAgent }],
    );

    // Refused as the routes refuse, writing nothing (but the failed login's event).
    const users = async () => ((await dataSource.query(`SELECT count(*)::int AS n FROM users`)) as Array<{ n: number }>)[0].n;
    const count = await users();
    const refusal = (fn: () => Promise<unknown>) =>
      fn().then(
        () => assert.fail('not refused'),
        (error: { getStatus?: () => number; getResponse?: () => unknown }) => ({
          status: error.getStatus?.(),
          body: error.getResponse?.(),
        }),
      );
    const invalid = await refusal(() => accounts.register({ username: 'has space', email: 'not-an-email', password: 'short' }, client));
    assert.equal(invalid.status, 400);
    const messages = (invalid.body as { message: string[] }).message.join(' | ');
    for (const field of ['username', 'email', 'password']) assert.match(messages, new RegExp(`\\b${field}\\b`), messages);
    assert.equal((await refusal(() => accounts.register({ ...newUserInput(), role: 'admin' } as never, client))).status, 400, 'an unknown property');
    // A lone surrogate, which the routes refuse before validation (two passwords would hash as one).
    assert.equal((await refusal(() => accounts.register({ ...newUserInput(), password: 'long enough pass \ud800 word' }, client))).status, 400);
    assert.equal((await refusal(() => accounts.register({ ...newUserInput(), email: input.email }, client))).status, 409);
    assert.equal(await users(), count);
    assert.equal((await refusal(() => accounts.login({ email: input.email, password: 'wrong-password-123' }, client))).status, 401);
    assert.equal((await events('LOGIN_FAILED')).length, 1);
  });

  it("refuses to record an event type it does not know, and keeps an end's reason its own whatever the caller's metadata says", async () => {
    const dataSource = app.get<DataSource>(SESSIONARY_DATA_SOURCE_TOKEN);
    const audit = app.get(AuditService);
    await assert.rejects(
      dataSource.transaction((em) => audit.record(em, { type: 'ORDER_SHIPPED' as AuditEventType, userId: null })),
      /ORDER_SHIPPED is not an audit event type/,
    );
    const accessToken = await signedIn(http);
    const { userId, sessionId } = (await http.get('/orders').set('Authorization', `Bearer ${accessToken}`)).body as {
      userId: string;
      sessionId: string;
    };
    const before = app.get(Listener).ended.length;
    await app
      .get(SessionsService)
      .endSessions({ userId }, { reason: 'revoked', event: 'SESSION_REVOKED', metadata: { reason: 'logout', by: 'host' } });
    const [event] = (await dataSource.query(`SELECT metadata FROM audit_events WHERE session_id = $1 AND type = 'SESSION_REVOKED'`, [
      sessionId,
    ])) as Array<{
      metadata: Record<string, string>;
    }>;
    assert.deepEqual(event.metadata, { reason: 'revoked', by: 'host' }, "the end's reason, and the caller's other fields");
    assert.deepEqual(
      app
        .get(Listener)
        .ended.slice(before)
        .map((e) => e.reason),
      ['revoked'],
    );
    assert.ok(!('keyStore' in app.get(KeyRotationService)), 'the key store (writes without KEY_ROTATED) is no longer part of the exported service');
    // The last page's nextCursor (null) passed back as it came is the first page, as no cursor is.
    const first = await audit.list({ userId, limit: 5, cursor: null });
    assert.deepEqual(first, await audit.list({ userId, limit: 5 }));
    assert.equal(AUTH_CONTEXT_KEY, 'auth');
    assert.equal(IS_PUBLIC_KEY, 'isPublic');
    // A host's client context and metadata with lone surrogates (half an emoji, cut by the
    // host): stored well-formed, and the event verifies (until 0.23.0 the HMAC covered the
    // string as given while PostgreSQL stored U+FFFD, and an intact log read as altered; the
    // metadata's escape was a failed write).
    const halfEmoji = '\ud83d';
    await dataSource.transaction((em) =>
      audit.record(em, {
        type: 'LOGIN',
        userId,
        sessionId,
        client: { ipAddress: `203.0.113.9${halfEmoji}`, userAgent: `HostAgent/1.0 ${halfEmoji}` },
        metadata: { method: 'email', note: `cut ${halfEmoji}` },
      }),
    );
    const [stored] = (await dataSource.query(
      `SELECT ip_address, user_agent, metadata FROM audit_events WHERE session_id = $1 AND type = 'LOGIN' ORDER BY seq DESC LIMIT 1`,
      [sessionId],
    )) as Array<{ ip_address: string; user_agent: string; metadata: Record<string, string> }>;
    assert.deepEqual(stored, {
      ip_address: '203.0.113.9\ufffd',
      user_agent: 'HostAgent/1.0 \ufffd',
      metadata: { method: 'email', note: 'cut \ufffd' },
    });
    // Ids in the other spellings PostgreSQL accepts (braces, upper case, no hyphens), a user agent
    // past 512 units ending in spaces (varchar(512) cuts those silently) and an empty address:
    // hashed as stored (until 0.24.1 the event read as altered, or moved to another user).
    const bare = (id: string) => id.replace(/-/g, '').toUpperCase();
    await dataSource.transaction((em) =>
      audit.record(em, {
        type: 'LOGOUT',
        userId: `{${userId.toUpperCase()}}`,
        sessionId: bare(sessionId),
        client: { ipAddress: '', userAgent: `${'HostAgent/2.0 '.padEnd(512, 'x')}   ` },
      }),
    );
    const [spelled] = (await dataSource.query(
      `SELECT user_id, session_id, chain_key, ip_address, length(user_agent) AS agent FROM audit_events WHERE session_id = $1 AND type = 'LOGOUT' ORDER BY seq DESC LIMIT 1`,
      [sessionId],
    )) as Array<Record<string, unknown>>;
    assert.deepEqual(spelled, { user_id: userId, session_id: sessionId, chain_key: userId, ip_address: null, agent: 512 });
    await assert.rejects(
      dataSource.transaction((em) => audit.record(em, { type: 'LOGOUT', userId: 'not-a-uuid' })),
      /AuditService: userId is not a uuid/,
    );
    const verification = await app.get(AuditVerifierService).verify();
    assert.deepEqual({ ok: verification.ok, reason: verification.reason }, { ok: true, reason: null });
  });

  it("answers on its own routes as API.md says whatever global filters the host adds, and leaves the host's routes to them with globalExceptionFilter: false", async () => {
    const unauthenticated = (res: request.Response) => {
      assert.equal(res.status, 401, res.text);
      assert.equal(res.body.error, 'Unauthorized');
      assert.ok(res.headers['www-authenticate']?.startsWith('Bearer'), JSON.stringify(res.headers));
    };
    // A host's catch-all added with useGlobalFilters() is asked before any APP_FILTER: it takes the host's routes, not Sessionary's.
    const catching = await sessionaryApp([], [LockedOrderController], [], { hostGlobalFilter: new HostCatchAll() });
    try {
      const http = request(catching.getHttpServer());
      unauthenticated(await http.get('/api/v1/users/me'));
      const invalid = await http.post('/api/v1/auth/login').send({ email: 'x' });
      assert.equal(invalid.status, 400);
      assert.ok(Array.isArray(invalid.body.message), invalid.text);
      assert.deepEqual((await http.get('/locked')).body, { host: 'caught it' });
    } finally {
      await catching.close();
    }
    // Without Sessionary's global filter, a host's own global filter for its error answers on its route.
    const own = await sessionaryApp([], [LockedOrderController], [{ provide: APP_FILTER, useClass: OrderLockedFilter }], {
      globalExceptionFilter: false,
    });
    try {
      const http = request(own.getHttpServer());
      const locked = await http.get('/locked');
      assert.equal(locked.status, 423, locked.text);
      assert.deepEqual(locked.body, { code: 'ORDER_LOCKED' });
      unauthenticated(await http.get('/api/v1/users/me'));
    } finally {
      await own.close();
    }
  });

  it("takes its options from the host's global ConfigService (forRootAsync with inject, no imports), not its own", { timeout: 60_000 }, async () => {
    const databaseUrl = await emptyDatabase();
    @Module({
      imports: [
        ScheduleModule.forRoot(),
        ConfigModule.forRoot({
          isGlobal: true,
          ignoreEnvFile: true,
          load: [() => ({ SESSIONARY_DATABASE: databaseUrl, ROUTES: 'from-host-config' })],
        }),
        SessionaryModule.forRootAsync({
          inject: [ConfigService],
          useFactory: (config: ConfigService) => ({
            databaseUrl: config.getOrThrow<string>('SESSIONARY_DATABASE'),
            routePrefix: config.getOrThrow<string>('ROUTES'),
            ...secrets,
            nodeEnv: 'test',
            bcryptCost: 4,
            rateLimitPerMinute: 0,
          }),
        }),
      ],
    })
    class ConfiguredHostModule {}
    // Until 0.29.0 the factory's ConfigService was looked up among Sessionary's own imports first,
    // found Sessionary's (which needs the configuration being made), and the boot failed.
    const moduleRef = await Test.createTestingModule({ imports: [ConfiguredHostModule] }).compile();
    const app = moduleRef.createNestApplication<NestFastifyApplication>(new FastifyAdapter());
    try {
      await app.init();
      await app.getHttpAdapter().getInstance().ready();
      const hostHttp = request(app.getHttpServer());
      const user = newUserInput();
      // Served under the prefix the host's ConfigService gave: the factory had the host's (Sessionary's own has no ROUTES).
      assert.equal((await hostHttp.post('/from-host-config/auth/register').send(user)).status, 201);
    } finally {
      await app.close();
    }
  });

  it('refuses to boot without the scheduler, saying what to import, and boots without its jobs when told to run none', async () => {
    // Closed if it boots after all, so that a failure here leaves nothing running.
    const refusal = await sessionaryApp([], [], [], { scheduler: false }).then(
      (booted) => booted.close().then(() => 'booted'),
      (error: unknown) => String(error),
    );
    assert.match(refusal, /import ScheduleModule\.forRoot\(\) from @nestjs\/schedule once/);
    const quiet = await sessionaryApp([], [], [HostJob], { scheduledJobs: false });
    try {
      // The host's scheduler mounted every @Cron it found; Sessionary took its own out (and left the host's, whatever their names).
      assert.deepEqual([...quiet.get(SchedulerRegistry).getCronJobs().keys()].sort(), ['host-job', 'sessions-cleanup']);
      const quietHttp = request(quiet.getHttpServer());
      assert.equal((await quietHttp.get('/api/v1/users/me').set('Authorization', `Bearer ${await signedIn(quietHttp)}`)).status, 200);
    } finally {
      await quiet.close();
    }
    const noScheduler = await sessionaryApp([], [], [], { scheduler: false, scheduledJobs: false });
    await noScheduler.close();
  });

  it("does no work in a job the host's scheduler fires before Sessionary takes its jobs out (scheduledJobs: false)", async () => {
    // The scheduler mounts and starts every @Cron at its own bootstrap, before the other modules'
    // bootstrap hooks (some of them wait on the database) and ScheduledJobsCheck's removal: a
    // tick due in that window runs. Each handler is fired here as the scheduler would fire it.
    const quiet = await sessionaryApp([], [], [], { scheduledJobs: false });
    try {
      const fire = async (target: NestFastifyApplication) => {
        const fired: string[] = [];
        let worked = 0;
        for (const type of [SessionsCleanupTask, AuditPartitionsTask, KeyRotationTask, RateLimitPruneTask, LoginThrottleService]) {
          const instance = target.get<object>(type) as unknown as Record<string, unknown>;
          // What each handler hands its work to, counted instead of run.
          for (const work of ['handleTick', 'prune']) {
            if (typeof instance[work] === 'function') instance[work] = () => Promise.resolve(void worked++);
          }
          const prototype = type.prototype as unknown as Record<string, unknown>;
          for (const method of Object.getOwnPropertyNames(prototype)) {
            const name: unknown = Reflect.getMetadata('SCHEDULER_NAME', prototype[method] as object);
            if (typeof name !== 'string') continue;
            fired.push(name);
            await (instance[method] as () => Promise<void>).call(instance);
          }
        }
        return { fired: fired.sort(), worked };
      };
      const every = Object.values(SESSIONARY_CRON_JOBS).sort();
      assert.deepEqual(await fire(quiet), { fired: every, worked: 0 });
      // The same handlers in an app that runs its jobs hand their work on: the count can see it.
      const own = await sessionaryApp();
      try {
        // Its scheduler's own ticks would be counted too.
        for (const job of own.get(SchedulerRegistry).getCronJobs().values()) await job.stop();
        assert.deepEqual(await fire(own), { fired: every, worked: every.length });
      } finally {
        await own.close();
      }
    } finally {
      await quiet.close();
    }
  });

  it('keeps health and metrics at the root, and nothing of the API outside routePrefix', async () => {
    assert.equal((await http.get('/health/live')).status, 200);
    assert.equal((await http.get('/metrics')).status, 200);
    assert.equal((await http.post('/auth/login').send({})).status, 404);
  });

  it('refuses unknown options by name, and invalid values as the service refuses its environment', () => {
    assert.throws(
      () => SessionaryModule.forRoot({ databaseUrl: 'postgres://x/y', ...secrets, sessionIdelTtl: 5 } as never),
      /unknown option sessionIdelTtl/,
    );
    assert.throws(() => SessionaryModule.forRoot({ databaseUrl: 'postgres://x/y', ...secrets, sessionIdleTtl: -1 }), /SESSION_IDLE_TTL/);
    assert.throws(() => SessionaryModule.forRoot({ databaseUrl: 'postgres://x/y', ...secrets, routePrefix: '/api/' }), /ROUTE_PREFIX/);
  });
});

/** A hybrid host's message handlers (a TCP microservice beside the HTTP routes). */
@Controller()
class HostMessages {
  static ran: string[] = [];
  @MessagePattern('sum') sum(@Payload() numbers: number[]) {
    HostMessages.ran.push('sum');
    return numbers.reduce((a, b) => a + b, 0);
  }
  @Public() @MessagePattern('public-sum') publicSum(@Payload() numbers: number[]) {
    HostMessages.ran.push('public-sum');
    return numbers.reduce((a, b) => a + b, 0);
  }
  @Public() @MessagePattern('refused') refused() {
    throw new RpcException('the host refused it');
  }
  @Public() @MessagePattern('fails') fails() {
    throw new Error('a bug of the host');
  }
}

describe('Sessionary inside a hybrid host app: HTTP and a microservice connected with inheritAppConfig (e2e)', () => {
  let app: NestFastifyApplication;
  let client: ClientProxy;
  const logger = new CapturingLogger();
  before(async () => {
    const port = await findFreePort();
    // The request limit on: its guard, as the session guard, meets the messages too.
    app = await sessionaryApp([], [OrdersController, HostMessages], [], { microservicePort: port, logger, options: { rateLimitPerMinute: 100 } });
    client = ClientProxyFactory.create({ transport: Transport.TCP, options: { host: '127.0.0.1', port } });
    await client.connect();
  });
  after(async () => {
    await client.close();
    await app.close();
  });
  // Until 0.27.0 every message reached Sessionary's guards and filter as if it were an HTTP
  // request, and its client waited for ever: a bounded wait, so that a hang fails the test.
  const send = (pattern: string, data: unknown): Promise<unknown> =>
    firstValueFrom(client.send(pattern, data).pipe(timeout(5_000))).catch((error: unknown) => ({ error }));

  it("answers a handler marked @Public() on the host's transport, and gives its errors the transport's own answers", async () => {
    assert.equal(await send('public-sum', [1, 2, 3]), 6);
    assert.deepEqual(await send('refused', []), { error: { status: 'error', message: 'the host refused it' } });
    assert.deepEqual(await send('fails', []), { error: { status: 'error', message: 'Internal server error' } });
    assert.ok(
      logger.lines.some((l) => l.level === 'error' && l.message === 'a bug of the host'),
      JSON.stringify(logger.lines.filter((l) => l.level === 'error')),
    );
  });

  it('refuses a handler not marked @Public() on another transport (Sessionary authenticates HTTP requests only), never runs it, and says why', async () => {
    HostMessages.ran = [];
    assert.deepEqual(await send('sum', [1, 2, 3]), { error: { status: 'error', message: 'Internal server error' } });
    assert.deepEqual(HostMessages.ran, []);
    const refusal = logger.lines.find((l) => l.level === 'error' && /authenticates HTTP requests only/.test(l.message));
    assert.ok(refusal, JSON.stringify(logger.lines.filter((l) => l.level === 'error')));
    assert.match(refusal.message, /HostMessages\.sum is a handler of another transport \(rpc\) that is not marked @Public\(\)/);
  });

  it('keeps authenticating and counting the HTTP routes as before', async () => {
    const http = request(app.getHttpServer());
    const refused = await http.get('/orders');
    assert.equal(refused.status, 401);
    assert.equal(refused.headers['x-ratelimit-limit'], '100');
    const token = await signedIn(http);
    assert.equal((await http.get('/orders').set('Authorization', `Bearer ${token}`)).status, 200);
  });
});
