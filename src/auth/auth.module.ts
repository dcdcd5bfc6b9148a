import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { ConfigService } from '@nestjs/config';
import { JwtModule } from '@nestjs/jwt';
import { PassportModule } from '@nestjs/passport';
import { AuditModule } from '../audit/audit.module';
import { LoginThrottleModule } from '../login-throttle/login-throttle.module';
import type { AppConfig } from '../config/config';
import { SessionsModule } from '../sessions/sessions.module';
import { UsersModule } from '../users/users.module';
import { ACCESS_TOKEN_ALGORITHM, AccessTokenService } from './access-token.service';
import { AuthController } from './auth.controller';
import { AuthService } from './auth.service';
import { JwtAuthGuard } from './jwt-auth.guard';
import { createJwtKey, jwtKeyProvider } from './jwt-key';
import { JwtStrategy } from './jwt.strategy';
import { PasswordController } from './password.controller';
import { SessionGuard } from './session.guard';

@Module({
  imports: [
    SessionaryConfigModule,
    UsersModule,
    SessionsModule,
    AuditModule,
    LoginThrottleModule,
    PassportModule,
    JwtModule.registerAsync({
      imports: [SessionaryConfigModule],
      inject: [ConfigService],
      useFactory: (config: ConfigService<AppConfig, true>) => ({
        secret: createJwtKey(config),
        signOptions: {
          algorithm: ACCESS_TOKEN_ALGORITHM,
          issuer: config.get('JWT_ISSUER', { infer: true }),
          audience: config.get('JWT_AUDIENCE', { infer: true }),
        },
      }),
    }),
  ],
  controllers: [AuthController, PasswordController],
  providers: [AuthService, AccessTokenService, JwtStrategy, JwtAuthGuard, SessionGuard, jwtKeyProvider],
  exports: [SessionGuard],
})
export class AuthModule {}
