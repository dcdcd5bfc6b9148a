/**
 * Operator commands, run with the server's own configuration (environment and .env):
 *   npm run cli -- promote-admin <email>
 *   npm run cli -- demote-admin <email>
 *   npm run cli -- end-all-sessions
 *   npm run cli -- audit-verify [--checkpoint-file <file>]   exit code 0 intact, 1 broken, 2 unreadable file
 * Without DATABASE_URL they use the embedded database in DATA_DIR (stop the server first:
 * one PostgreSQL owns a data directory at a time).
 */
import { ConsoleLogger, Logger, NotFoundException } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { join } from 'node:path';
import { AppModule } from './app.module';
import { loadConfig, useDatabaseUrl } from './config/config';
import { EmbeddedDatabase, startEmbeddedPostgres } from './database/embedded-postgres';
import { AuditVerification, AuditVerifierService, CheckpointFileError } from './audit/audit-verifier.service';
import type { UserRole } from './users/user.entity';
import { SessionsService } from './sessions/sessions.service';
import { UsersService } from './users/users.service';

const ROLE_COMMANDS: Record<string, UserRole> = { 'promote-admin': 'admin', 'demote-admin': 'user' };
const USAGE =
  'Usage: npm run cli -- promote-admin <email> | demote-admin <email> | end-all-sessions | audit-verify [--checkpoint-file <file>]';

async function main(argv: string[]): Promise<number> {
  const [command, email, ...rest] = argv;
  const role = command ? ROLE_COMMANDS[command] : undefined;
  const endAll = command === 'end-all-sessions' && email === undefined;
  const verify = command === 'audit-verify' && (email === undefined || (email === '--checkpoint-file' && rest.length === 1));
  const checkpointFile = verify ? rest[0] : undefined;
  if (!endAll && !verify && (!role || !email || rest.length)) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const logger = new ConsoleLogger({ logLevels: ['fatal', 'error', 'warn'] });
  let config = loadConfig();
  let embedded: EmbeddedDatabase | undefined;
  if (!config.DATABASE_URL) {
    embedded = await startEmbeddedPostgres({ dataDir: join(config.DATA_DIR, 'pg'), logger });
    useDatabaseUrl(embedded.url);
    config = loadConfig();
  }
  const app = await NestFactory.createApplicationContext(AppModule.forRoot(config), { logger });
  try {
    if (verify) {
      const result = await app.get(AuditVerifierService).verify({ checkpointFile });
      process.stdout.write(verificationReport(result, checkpointFile));
      return result.ok ? 0 : 1;
    }
    if (endAll) {
      const ended = await app
        .get(SessionsService)
        .endAllSessions({ reason: 'revoked_by_admin', event: 'SESSION_REVOKED', metadata: { by: 'cli' } });
      process.stdout.write(`Ended ${ended} active session(s)\n`);
      return 0;
    }
    const { user, previous } = await app.get(UsersService).setRole(email, role!, 'cli');
    process.stdout.write(
      previous === role ? `${user.email} is already ${role}\n` : `${user.email}: role ${previous} -> ${role}\n`,
    );
    return 0;
  } catch (error) {
    if (error instanceof CheckpointFileError) {
      process.stderr.write(`${error.message}\n`);
      return 2;
    }
    if (error instanceof NotFoundException) {
      process.stderr.write(`No user with email ${email}\n`);
      return 1;
    }
    throw error;
  } finally {
    await app.close(); // the pool first, then the server it talks to
    await embedded?.stop();
  }
}

function verificationReport(v: AuditVerification, checkpointFile: string | undefined): string {
  const lines = [
    `Audit log: ${v.ok ? 'INTACT' : 'BROKEN'}`,
    `  events checked:    ${v.checked}`,
    `  chains:            ${v.chains}`,
    `  latest checkpoint: ${v.checkpointId ?? 'none'}`,
  ];
  if (v.dropped) lines.push(`  before the bases:  ${v.dropped} (months dropped by retention)`);
  if (checkpointFile) lines.push(`  checkpoint file:   ${checkpointFile} (last line: checkpoint ${v.fileCheckpointId ?? 'none'})`);
  if (!v.ok) {
    lines.push(`  first broken event: ${v.firstBrokenId ?? '(none stored: see the reason)'}`);
    lines.push(`  reason:            ${v.reason}`);
  }
  return `${lines.join('\n')}\n`;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    new Logger('cli').fatal(error instanceof Error ? (error.stack ?? error.message) : String(error));
    process.exit(1);
  },
);
