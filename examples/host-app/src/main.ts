import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { HostModule } from './host.module';

async function main(): Promise<void> {
  // The host's own app: Fastify, no global prefix; Sessionary brings its routes and its guard.
  const app = await NestFactory.create<NestFastifyApplication>(HostModule, new FastifyAdapter());
  app.enableShutdownHooks();
  await app.listen({ port: Number(process.env.PORT ?? 3000), host: '127.0.0.1' });
  console.log(`host listening on ${await app.getUrl()}`);
}

void main();
