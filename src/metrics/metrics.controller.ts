import { Controller, Get, Header, NotFoundException, UseGuards } from '@nestjs/common';
import { SessionaryRoutes } from '../common/sessionary-routes.decorator';
import { ConfigService } from '@nestjs/config';
import type { AppConfig } from '../config/config';
import { ApiOkResponse, ApiOperation, ApiTags } from '@nestjs/swagger';
import { SkipThrottle } from '@nestjs/throttler';
import { ProbeRoute } from '../common/probe-route.decorator';
import { Public } from '../common/public.decorator';
import { MetricsService } from './metrics.service';
import { MetricsTokenGuard } from './metrics-token.guard';

@ApiTags('operations')
@Public()
// Probes and scrapes are not a client's requests: they must not use up its limit or be refused.
@SkipThrottle()
// Its routes answer as API.md says whatever global filters and body parsers a host app has.
@SessionaryRoutes()
@Controller('metrics')
@UseGuards(MetricsTokenGuard)
export class MetricsController {
  private readonly enabled: boolean;

  constructor(
    private readonly metrics: MetricsService,
    config: ConfigService<AppConfig, true>,
  ) {
    // The route exists in every configuration (a module's routes cannot wait for an async
    // configuration); with METRICS_ENABLED=false it answers as an unknown route does.
    this.enabled = config.get('METRICS_ENABLED', { infer: true });
  }

  @Get()
  @ProbeRoute()
  @Header('Content-Type', 'text/plain; version=0.0.4; charset=utf-8')
  @ApiOperation({ operationId: 'getMetrics', summary: 'Prometheus metrics (text exposition format)' })
  @ApiOkResponse({ description: 'Prometheus text format', content: { 'text/plain': { schema: { type: 'string' } } } })
  scrape(): Promise<string> {
    if (!this.enabled) throw new NotFoundException('Route GET:/metrics not found');
    return this.metrics.registry.metrics();
  }
}
