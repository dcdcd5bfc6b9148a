import { ConfigurationError } from '../config/configuration-error';

/**
 * Sessionary's HTTP parts (its hooks, its guard and filter, the access log) are Fastify's: an
 * application on another adapter would fail later with "addHook is not a function" or at its
 * first request. Said at boot instead. An application context without HTTP (the CLI) passes.
 */
export function requireFastify(adapter: { getType(): string } | undefined): void {
  if (!adapter) return;
  const type = adapter.getType();
  if (type !== 'fastify') {
    throw new ConfigurationError(
      `Sessionary needs Nest's Fastify adapter (@nestjs/platform-fastify: NestFactory.create(AppModule, new FastifyAdapter())); this application runs on ${type}`,
    );
  }
}
