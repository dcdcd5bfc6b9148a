import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { AuditModule } from '../audit/audit.module';
import { KeysModule } from '../keys/keys.module';
import { SessionsModule } from '../sessions/sessions.module';
import { MetricsController } from './metrics.controller';
import { MetricsService } from './metrics.service';

@Module({ imports: [SessionaryConfigModule, SessionsModule, AuditModule, KeysModule], controllers: [MetricsController], providers: [MetricsService] })
export class MetricsModule {}
