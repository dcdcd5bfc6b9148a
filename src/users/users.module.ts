import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { AuditModule } from '../audit/audit.module';
import { RecentAuthModule } from '../common/recent-auth';
import { LoginThrottleModule } from '../login-throttle/login-throttle.module';
import { RateLimitModule } from '../rate-limit/rate-limit.module';
import { PasswordHasher } from './password-hasher';
import { UsersController } from './users.controller';
import { UsersService } from './users.service';

@Module({
  imports: [SessionaryConfigModule, AuditModule, LoginThrottleModule, RecentAuthModule, RateLimitModule],
  controllers: [UsersController],
  providers: [UsersService, PasswordHasher],
  exports: [UsersService, PasswordHasher],
})
export class UsersModule {}
