import { Controller, Get, Injectable, Logger, Module } from '@nestjs/common';
import { OnEvent } from '@nestjs/event-emitter';
import { ScheduleModule } from '@nestjs/schedule';
import { SessionaryModule, CurrentAuth, Public, type AuthContext, type SessionEndedEvent } from 'sessionary';

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
  private readonly logger = new Logger('Orders');
  ended: SessionEndedEvent[] = [];
  @OnEvent('session.ended') onEnded(e: SessionEndedEvent) {
    this.ended.push(e);
    this.logger.log(`session ended: ${e.sessionId} ${e.reason}`);
  }
}

@Module({
  imports: [
    // Once, here: Sessionary's cleanup, checkpoints and retention are @Cron jobs it runs.
    ScheduleModule.forRoot(),
    SessionaryModule.forRootAsync({
      useFactory: () => ({
        databaseUrl: process.env.DATABASE_URL!,
        jwtSecret: process.env.JWT_SECRET!,
        passwordPepper: process.env.PASSWORD_PEPPER!,
        auditHmacKey: process.env.AUDIT_HMAC_KEY!,
        keyEncryptionKey: process.env.KEY_ENCRYPTION_KEY!,
        routePrefix: 'api/v1',
      }),
    }),
  ],
  controllers: [OrdersController],
  providers: [Listener],
})
export class HostModule {}
