import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { AuditModule } from '../audit/audit.module';
import { KeysModule } from '../keys/keys.module';
import { LoginThrottleModule } from '../login-throttle/login-throttle.module';
import { RateLimitModule } from '../rate-limit/rate-limit.module';
import { SessionsModule } from '../sessions/sessions.module';
import { MetricsController } from './metrics.controller';
import { MetricsService } from './metrics.service';

@Module({
  imports: [SessionaryConfigModule, SessionsModule, AuditModule, KeysModule, LoginThrottleModule, RateLimitModule],
  controllers: [MetricsController],
  providers: [MetricsService],
})
export class MetricsModule {}
