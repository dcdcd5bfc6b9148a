import { Logger } from '@nestjs/common';
import { join } from 'node:path';
import { NestFactory } from '@nestjs/core';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { AppModule } from './app.module';
import { configureApp, createFastifyAdapter, NEST_APP_OPTIONS } from './app.setup';
import { loadConfig, useDatabaseUrl } from './config/config';
import { armShutdownDeadline } from './config/shutdown-deadline';
import { describeFatal } from './config/describe-fatal';
import { createLogger } from './config/logger';
import { withoutNestExceptionHandler } from './config/nest-exception-handler';
import { embeddedInProductionWarning } from './database/embedded-in-production';
import { trustProxyWarning } from './config/trust-proxy-warning';
import { startEmbeddedPostgres } from './database/embedded-postgres';

async function bootstrap(): Promise<void> {
  let config = loadConfig();
  const logger = createLogger(config);
  const boot = new Logger('Bootstrap');
  Logger.overrideLogger(logger);
  const proxyWarning = trustProxyWarning(config);
  if (proxyWarning) boot.warn(proxyWarning);

  // No DATABASE_URL: a real PostgreSQL from the embedded-postgres package, data under DATA_DIR.
  const embedded = config.DATABASE_URL ? undefined : await startEmbeddedPostgres({ dataDir: join(config.DATA_DIR, 'pg'), logger });
  if (embedded) {
    const warning = embeddedInProductionWarning(config);
    if (warning) boot.warn(warning);
    useDatabaseUrl(embedded.url);
    config = loadConfig();
  }

  // On SIGTERM/SIGINT Nest closes the app (the pool included) and raises the signal again;
  // the embedded server's own signal handler then stops PostgreSQL (see embedded-postgres.ts).
  // NEST_APP_OPTIONS' abortOnError: false: an error while the app is made (a database that does
  // not exist, a refused password) reaches the catch below, which says it once, in one line.
  const app = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(config), createFastifyAdapter(config), {
    ...NEST_APP_OPTIONS,
    logger: withoutNestExceptionHandler(logger),
  });
  await configureApp(app, config, logger);
  // In the same turn as configureApp's enableShutdownHooks (a signal is an event-loop event, never
  // delivered between the two): a signal during listen() finds both listening, not Nest alone,
  // whose re-raised signal the deadline's listener would otherwise catch.
  armShutdownDeadline(config.SHUTDOWN_TIMEOUT);
  await app.listen({ port: config.PORT, host: config.HOST });
  boot.log(`Listening on ${await app.getUrl()} (${embedded ? 'embedded PostgreSQL' : 'PostgreSQL from DATABASE_URL'})`);
}

bootstrap().catch((error: unknown) => {
  // The message says what to fix; the stack is for the operator, never a client (and says
  // nothing more of a configuration refused, or of a database that cannot be reached).
  new Logger('Bootstrap').fatal(describeFatal(error));
  process.exit(1);
});
