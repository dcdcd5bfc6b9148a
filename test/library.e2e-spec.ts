import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Controller, Get, Injectable, Module } from '@nestjs/common';
import { ConfigModule } from '@nestjs/config';
import { OnEvent } from '@nestjs/event-emitter';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import request from 'supertest';
// The package's entry point, as a host application imports it.
import { CurrentAuth, Public, SessionaryModule, type AuthContext, type SessionEndedEvent } from '../src/index';
import { newUserInput } from './helpers/factories';
import { emptyDatabase } from './helpers/test-app';

// The host application of issue 9, as written there.
@Controller('orders')
class OrdersController {
  @Get() mine(@CurrentAuth() auth: AuthContext) {
    return { userId: auth.userId, sessionId: auth.sessionId };
  }
  @Public() @Get('catalog') catalog() {
    return [];
  }
}

@Injectable()
class Listener {
  ended: SessionEndedEvent[] = [];
  @OnEvent('session.ended') onEnded(e: SessionEndedEvent) {
    this.ended.push(e);
  }
}

const secret = () => randomBytes(48).toString('base64');
const secrets = { jwtSecret: secret(), passwordPepper: secret(), auditHmacKey: secret() };

describe('Sessionary inside a host Nest app (e2e)', () => {
  let app: NestFastifyApplication;
  let http: ReturnType<typeof request>;

  before(async () => {
    const databaseUrl = await emptyDatabase();
    @Module({
      imports: [
        // The host's own global configuration, with names Sessionary uses too: neither sees the other's.
        ConfigModule.forRoot({ isGlobal: true, ignoreEnvFile: true, load: [() => ({ JWT_ISSUER: 'the-host', SESSION_IDLE_TTL: 1 })] }),
        SessionaryModule.forRootAsync({
          useFactory: () => ({ databaseUrl, ...secrets, routePrefix: 'api/v1', nodeEnv: 'test', bcryptCost: 4, rateLimitPerMinute: 0 }),
        }),
      ],
      controllers: [OrdersController],
      providers: [Listener],
    })
    class HostModule {}

    const moduleRef = await Test.createTestingModule({ imports: [HostModule] }).compile();
    // The host's own app: Fastify, no global prefix, none of Sessionary's app setup.
    app = moduleRef.createNestApplication<NestFastifyApplication>(new FastifyAdapter());
    await app.init();
    await app.getHttpAdapter().getInstance().ready();
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

    assert.equal((await http.post('/api/v1/auth/logout').set('Authorization', `Bearer ${accessToken}`)).status, 204);
    assert.deepEqual(
      app.get(Listener).ended.map((e) => [e.sessionId, e.reason]),
      [[sessionId, 'logout']],
    );
    assert.equal((await http.get('/orders').set('Authorization', `Bearer ${accessToken}`)).status, 401, 'the ended session is refused at once');
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
