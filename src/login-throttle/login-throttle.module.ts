import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { LoginThrottleService } from './login-throttle.service';

/**
 * Throttles password checks: logins (AuthModule) and current-password checks before a
 * password or email change (UsersModule). Depends on nothing but the database.
 */
@Module({ imports: [SessionaryConfigModule], providers: [LoginThrottleService], exports: [LoginThrottleService] })
export class LoginThrottleModule {}
