import { Module } from '@nestjs/common';
import { SessionsModule } from '../sessions/sessions.module';
import { MetricsController } from './metrics.controller';
import { MetricsService } from './metrics.service';

@Module({ imports: [SessionsModule], controllers: [MetricsController], providers: [MetricsService] })
export class MetricsModule {}
