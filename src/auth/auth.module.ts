import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { ConfigService } from '@nestjs/config';
import { JwtModule } from '@nestjs/jwt';
import { AuditModule } from '../audit/audit.module';
import { LoginThrottleModule } from '../login-throttle/login-throttle.module';
import type { AppConfig } from '../config/config';
import { SessionsModule } from '../sessions/sessions.module';
import { UsersModule } from '../users/users.module';
import { KeysModule } from '../keys/keys.module';
import { AccessTokenService } from './access-token.service';
import { AuthController } from './auth.controller';
import { AccountsService } from './accounts.service';
import { AuthService } from './auth.service';
import { JwtAuthGuard } from './jwt-auth.guard';
import { JwtStrategy } from './jwt.strategy';
import { PasswordController } from './password.controller';
import { RateLimitModule } from '../rate-limit/rate-limit.module';
import { SessionGuard } from './session.guard';

@Module({
  imports: [
    SessionaryConfigModule,
    UsersModule,
    SessionsModule,
    AuditModule,
    LoginThrottleModule,
    // The registration limit: its counters are rate_limits rows, which that module owns.
    RateLimitModule,
    KeysModule,
    JwtModule.registerAsync({
      imports: [SessionaryConfigModule],
      inject: [ConfigService],
      // The key and algorithm come from the ring at each signature (AccessTokenService).
      useFactory: (config: ConfigService<AppConfig, true>) => ({
        signOptions: {
          issuer: config.get('JWT_ISSUER', { infer: true }),
          audience: config.get('JWT_AUDIENCE', { infer: true }),
        },
      }),
    }),
  ],
  controllers: [AuthController, PasswordController],
  providers: [AuthService, AccountsService, AccessTokenService, JwtStrategy, JwtAuthGuard, SessionGuard],
  exports: [SessionGuard, AccountsService],
})
export class AuthModule {}
