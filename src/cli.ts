#!/usr/bin/env node
/**
 * `npm run cli -- <command>`: the operator commands of src/cli/run-command.ts (usage there and
 * in the README), run as this process's own, with its environment (and .env), stdout and
 * stderr; the process exits with the command's code. The package's `sessionary` bin (a host's
 * `npx --no sessionary <command>`), and `node dist/src/cli.js <command>` where there is no compiler
 * (the Docker image).
 */
import type { LoggerService } from '@nestjs/common';
import { runCommand } from './cli/run-command';

/**
 * The text logger's masking, on stderr: stdout carries the command's result (audit-export writes
 * NDJSON there). Without Nest's ExceptionHandler lines: a command makes its app with
 * abortOnError off, so what Nest would log with its stack is thrown to runCommand, which says it once.
 */
async function stderrLogger(): Promise<LoggerService> {
  const { StderrLogger } = await import('./config/logger.js');
  const { withoutNestExceptionHandler } = await import('./config/nest-exception-handler.js');
  return withoutNestExceptionHandler(new StderrLogger());
}

async function main(): Promise<number> {
  let logger: Promise<LoggerService> | undefined;
  return runCommand(process.argv.slice(2), {
    stdout: process.stdout,
    stderr: process.stderr,
    logger: () => (logger ??= stderrLogger()),
    env: process.env,
  });
}

void main().then((code) => process.exit(code));
