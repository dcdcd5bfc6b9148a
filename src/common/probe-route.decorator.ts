import { RouteConfig } from '@nestjs/platform-fastify';

/** The mark a probe's route carries in Fastify's route config (read back by isProbeRoute). */
const PROBE_ROUTE_CONFIG = { sessionaryProbe: true } as const;

/**
 * Marks a handler as a probe or a scrape (health checks, metrics): what load balancers and
 * Prometheus call every few seconds on every instance. ACCESS_LOG_PROBES decides whether its
 * successful answers get an access line (src/common/request-hygiene.ts).
 */
export const ProbeRoute = (): MethodDecorator => RouteConfig(PROBE_ROUTE_CONFIG);

/** Whether a route's Fastify config (`request.routeOptions.config`) carries the ProbeRoute mark. */
export function isProbeRoute(config: unknown): boolean {
  return typeof config === 'object' && config !== null && (config as { sessionaryProbe?: unknown }).sessionaryProbe === true;
}
