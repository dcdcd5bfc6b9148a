import { Module } from '@nestjs/common';
import { AuditModule } from '../audit/audit.module';
import { SessionsModule } from '../sessions/sessions.module';
import { MetricsController } from './metrics.controller';
import { MetricsService } from './metrics.service';

@Module({ imports: [SessionsModule, AuditModule], controllers: [MetricsController], providers: [MetricsService] })
export class MetricsModule {}
