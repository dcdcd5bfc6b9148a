/**
 * Operator commands, run with the server's own configuration (environment and .env):
 *   npm run cli -- promote-admin <email>
 *   npm run cli -- demote-admin <email>
 *   npm run cli -- end-all-sessions --confirm               without --confirm: how many would end, exit 2
 *   npm run cli -- audit-verify [--checkpoint-file <file>]   exit code 0 intact, 1 broken, 2 usage / unusable file, 3 not verified (could not run)
 *   npm run cli -- audit-verify --file <export.ndjson> ...   exports, offline: no database; 2 for a file that is not an export; several files are consecutive --after-seq pieces
 *   npm run cli -- audit-verify --dir <dir>                  the pieces shipped to AUDIT_SHIP_DIR, in name order, as one log
 *   npm run cli -- audit-export [--from T] [--to T] [--user-id U] [--type X] [--after-seq N] [--out FILE]
 *   npm run cli -- keys rotate [--now]                        the next signing key signs; the current one verifies until its tokens expire
 *   npm run cli -- keys list                                  the ring, without secrets
 * Without DATABASE_URL they use the embedded database in DATA_DIR (stop the server first:
 * one PostgreSQL owns a data directory at a time), which the service's first start made: a
 * command refuses to make one (exit 2). Results go to stdout, diagnostics to stderr.
 *
 * Exit codes, the same for every command (runCommand): 0 done (audit-verify: intact), 1 done
 * and the answer is no (audit-verify: BROKEN; promote-admin / demote-admin: no such user), 2 a
 * command line or file that cannot be used (nothing done), 3 the command could not run (the
 * database unreachable, the configuration or AUDIT_HMAC_KEY refused at boot, the embedded
 * database in use, audit-export's log still being written to, any unexpected error).
 *
 * The commands themselves, given their streams and environment: src/cli.ts runs them as the
 * process's own (and exits with the code); the tests also run them inside their process.
 */
import type { INestApplicationContext, LoggerService } from '@nestjs/common';
import { once } from 'node:events';
import { FileHandle, open, readdir, unlink } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import type { Readable, Writable } from 'node:stream';
import { ExportFileError, type ExportFileVerification, verifyExportFiles } from '../audit/audit-export-file-verifier';
import type { AuditVerification } from '../audit/audit-verifier.service';
import type { AuditFilter } from '../audit/audit.service';
import { CheckpointFileError } from '../audit/checkpoint-file';
import { describeFatal } from '../config/describe-fatal';
import { syncFile } from '../common/durable-file';
import type { UserRole } from '../users/user.entity';

// The application (Nest, TypeORM, every module) is imported by the commands that boot it, not
// here: loading it takes about a second, which a usage error, or the offline verification of
// an export on an investigator's machine, has no use for (0.1 and 0.3 s without it). One
// import() at a time: on Node 20, an import() of an ES module (Nest's packages are) that runs
// beside a require() of the same module fails ("Cannot require() ES Module … not yet fully
// loaded"), as Promise.all over two of them did here.

const ROLE_COMMANDS: Record<string, UserRole> = { 'promote-admin': 'admin', 'demote-admin': 'user' };
const USAGE = [
  'Usage: npm run cli -- <command>',
  '  promote-admin <email> | demote-admin <email>',
  '  end-all-sessions --confirm',
  '  audit-verify [--checkpoint-file <file>]   the database',
  '  audit-verify --file <export.ndjson> ...   export files, offline (several: consecutive --after-seq pieces, as one)',
  '  audit-verify --dir <AUDIT_SHIP_DIR>       every piece the service shipped there, offline, as one log',
  '  audit-export [--from <instant>] [--to <instant>] [--user-id <uuid>] [--type <event type>] [--after-seq <seq>] [--out <file>]',
  '  keys rotate [--now] | keys list   --now: even a next key published moments ago (after a leak)',
  'Exit codes: 0 done (audit-verify: intact), 1 audit-verify: broken / no such user, 2 usage or unusable file, 3 could not run',
].join('\n');

const OPTION_OF_FIELD: Record<string, string> = { from: '--from', to: '--to', userId: '--user-id', type: '--type', afterSeq: '--after-seq' };

/** A command line that cannot run: exit code 2, with the message. */
class UsageError extends Error {}

/** What audit-export exports: the route's filters, and the seq to continue after (an incremental export). */
interface ExportRequest {
  filter: AuditFilter;
  afterSeq: string | undefined;
}

/** What a command does once its arguments are understood: with the application (and its database), or without. */
type Command = { offline: () => Promise<number> } | { withApp: (app: INestApplicationContext) => Promise<number> };

/** Where a command reads its configuration and writes its result and diagnostics. */
export interface CommandIo {
  /** The result: reports, listings, audit-export's NDJSON. */
  stdout: Writable;
  /** Usage errors, refusals and other messages for the person at the terminal. */
  stderr: Writable;
  /**
   * The logger for the application's warnings and errors (fatal ones too), to stderr so that
   * stdout stays the result; asked for only by a command that needs it (Nest's console logger
   * loads Nest, which a usage error or an offline verification has no use for).
   */
  logger: () => Promise<LoggerService>;
  /** The configuration's variables (loadConfig reads .env too when this is process.env). */
  env: Record<string, string | undefined>;
}

/**
 * Runs one command line; answers its exit code: 0 done (verify: intact), 1 done and the answer
 * is no (verify: broken; no such user), 2 a command line or file that cannot be used, 3 the
 * command could not run (an error, logged as fatal, then said in one line).
 *
 * 3 is not 1: until 0.24.1 every error was 1, which for audit-verify says the log is broken, so
 * a cron job's `audit-verify || alert "audit log BROKEN"` cried tampering at each database
 * outage, wrong key or embedded database in use, and a real break drowned among those. A
 * verification that could not be done is no finding about the log either way.
 */
export async function runCommand(argv: string[], io: CommandIo): Promise<number> {
  try {
    return await runParsed(argv, io);
  } catch (error) {
    await logFatal(io, error);
    // Without the error's text (logged just above, masked by the logger): a verdict line a
    // person or a script can tell from audit-verify's report.
    io.stderr.write(
      argv[0] === 'audit-verify'
        ? 'audit-verify: NOT VERIFIED (exit code 3): the verification could not be done (the error above). This is no finding about ' +
            'the audit log, intact or broken (a broken log is exit code 1): remove the cause and run it again\n'
        : `${argv[0]}: could not run (exit code 3): the error above\n`,
    );
    return 3;
  }
}

/** The error as fatal in the command's logger, or as it is on stderr when no logger can be had (its modules cannot load). */
async function logFatal(io: CommandIo, error: unknown): Promise<void> {
  try {
    (await io.logger()).fatal?.(describeFatal(error), 'cli');
  } catch {
    io.stderr.write(`${describeFatal(error)}\n`);
  }
}

async function runParsed(argv: string[], io: CommandIo): Promise<number> {
  let command: Command;
  try {
    command = await parseCommand(argv, io);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    io.stderr.write(`${error.message}\n`);
    return 2;
  }
  try {
    if ('offline' in command) return await command.offline();
    return await withApp(io, command.withApp);
  } catch (error) {
    if (error instanceof CheckpointFileError || error instanceof ExportFileError || error instanceof UsageError) {
      io.stderr.write(`${error.message}\n`);
      return 2;
    }
    throw error;
  }
}

async function parseCommand(argv: string[], io: CommandIo): Promise<Command> {
  const [name, ...args] = argv;
  const role = name ? ROLE_COMMANDS[name] : undefined;
  if (role) {
    const [email, ...rest] = args;
    if (!email || rest.length) throw new UsageError(USAGE);
    return { withApp: (app) => setRole(io, app, email, role) };
  }
  if (name === 'end-all-sessions') {
    const { confirm } = parsed(args, { confirm: { type: 'boolean' } });
    return { withApp: (app) => endAllSessions(io, app, confirm === true) };
  }
  if (name === 'audit-verify') {
    const {
      file: files,
      dir,
      'checkpoint-file': checkpointFile,
    } = parsed(args, {
      file: { type: 'string', multiple: true },
      dir: { type: 'string' },
      'checkpoint-file': { type: 'string' },
    }) as { file?: string[]; dir?: string; 'checkpoint-file'?: string };
    if ([files, dir, checkpointFile].filter((v) => v !== undefined).length > 1)
      throw new UsageError(`audit-verify: --file, --dir and --checkpoint-file do not go together\n${USAGE}`);
    if (files !== undefined) return { offline: () => verifyFiles(io, files) };
    if (dir !== undefined) return { offline: async () => verifyFiles(io, await shippedPieces(dir)) };
    return { withApp: (app) => verifyDatabase(io, app, checkpointFile) };
  }
  if (name === 'audit-export') {
    const values = options(args, {
      from: { type: 'string' },
      to: { type: 'string' },
      'user-id': { type: 'string' },
      type: { type: 'string' },
      'after-seq': { type: 'string' },
      out: { type: 'string' },
    });
    const request = await exportRequest({
      from: values.from,
      to: values.to,
      userId: values['user-id'],
      type: values.type,
      afterSeq: values['after-seq'],
    });
    return { withApp: (app) => exportAudit(io, app, request, values.out) };
  }
  if (name === 'keys') {
    const [action, ...rest] = args;
    if (action === 'rotate' && (rest.length === 0 || (rest.length === 1 && rest[0] === '--now'))) {
      return { withApp: (app) => rotateKeys(io, app, rest.length === 1) };
    }
    if (action !== 'list' || rest.length) throw new UsageError(USAGE);
    return { withApp: (app) => listKeys(io, app) };
  }
  throw new UsageError(USAGE);
}

/** The command's `--name value` options; anything else is a usage error. */
function options<K extends string>(args: string[], spec: Record<K, { type: 'string' }>): Partial<Record<K, string>> {
  return parsed(args, spec) as Partial<Record<K, string>>;
}

function parsed(args: string[], spec: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>): Record<string, unknown> {
  try {
    return parseArgs({ args, options: spec, strict: true, allowPositionals: false }).values;
  } catch (error) {
    throw new UsageError(`${(error as Error).message}\n${USAGE}`);
  }
}

/** The export route's own validation (the DTO through the global pipe, then the date checks), so both refuse the same input. */
async function exportRequest(raw: Record<string, string | undefined>): Promise<ExportRequest> {
  const given = Object.fromEntries(Object.entries(raw).filter(([, v]) => v !== undefined));
  const { AdminAuditExportQueryDto } = await import('../admin/dto/admin-audit-export-query.dto.js');
  const { AppValidationPipe } = await import('../common/validation.js');
  const { toAuditFilter } = await import('../audit/dto/audit-query.dto.js');
  const { BadRequestException } = await import('@nestjs/common');
  try {
    const dto = (await new AppValidationPipe().transform(given, { type: 'query', metatype: AdminAuditExportQueryDto })) as InstanceType<
      typeof AdminAuditExportQueryDto
    >;
    return { filter: toAuditFilter(dto, dto.userId), afterSeq: dto.afterSeq };
  } catch (error) {
    if (!(error instanceof BadRequestException)) throw error;
    const message = (error.getResponse() as { message?: string | string[] }).message ?? error.message;
    // The DTO names the HTTP query's fields; the command line spells them as options.
    const text = ([] as string[])
      .concat(message)
      .map((m) => m.replace(/^(from|to|userId|type|afterSeq)\b/, (field) => OPTION_OF_FIELD[field]).replace(/ after to$/, ' after --to'))
      .join('; ');
    throw new UsageError(`audit-export: ${text}`);
  }
}

async function withApp(io: CommandIo, run: (app: INestApplicationContext) => Promise<number>): Promise<number> {
  const logger = await io.logger();
  const { loadConfig, loadSettings } = await import('../config/config.js');
  const { startEmbeddedPostgres } = await import('../database/embedded-postgres.js');
  // The settings first, the secrets after the check below: in development loadConfig keeps
  // generated secrets in DATA_DIR, which a command refused for want of a database must not write.
  const settings = loadSettings(io.env);
  let embedded: Awaited<ReturnType<typeof startEmbeddedPostgres>> | undefined;
  let config;
  if (settings.DATABASE_URL) config = loadConfig(io.env);
  else {
    const dataDir = resolve(settings.DATA_DIR, 'pg');
    // The service's first start makes the embedded cluster; a command never does. Run from a
    // shell without the service's DATABASE_URL, or from another folder, it made a new, empty
    // one and succeeded on it until 0.23.0: "Ended 0 active session(s)", an intact empty log.
    if (!existsSync(join(dataDir, 'PG_VERSION'))) {
      throw new UsageError(
        `No DATABASE_URL, and no embedded database in ${dataDir}: nothing to run on. Set DATABASE_URL to the service's ` +
          'database, or run the command where the service runs (the same folder and DATA_DIR; stop an embedded service first)',
      );
    }
    loadConfig(io.env); // the secrets refused (in production) before the server starts, not after
    embedded = await startEmbeddedPostgres({ dataDir, logger });
    io.stderr.write(`Using the embedded database in ${dataDir}\n`);
    config = loadConfig({ ...io.env, DATABASE_URL: embedded.url });
  }
  const { AppModule } = await import('../app.module.js');
  const { NestFactory } = await import('@nestjs/core');
  // A command does its one job: the service's instances run the scheduled ones (cleanup,
  // checkpoints, retention, rotation), with the service's settings, not this shell's.
  const app = await NestFactory.createApplicationContext(AppModule.forRoot(config, { scheduledJobs: false }), { logger, abortOnError: false });
  try {
    return await run(app);
  } finally {
    await app.close(); // the pool first, then the server it talks to
    await embedded?.stop();
  }
}

async function setRole(io: CommandIo, app: INestApplicationContext, email: string, role: UserRole): Promise<number> {
  const { UsersService } = await import('../users/users.service.js');
  const { NotFoundException } = await import('@nestjs/common');
  try {
    const { user, previous } = await app.get(UsersService).setRole(email, role, 'cli');
    io.stdout.write(previous === role ? `${user.email} is already ${role}\n` : `${user.email}: role ${previous} -> ${role}\n`);
    return 0;
  } catch (error) {
    if (!(error instanceof NotFoundException)) throw error;
    io.stderr.write(`No user with email ${email}\n`);
    return 1;
  }
}

/**
 * Every user's sessions end, on every instance at once: only with `--confirm`. Without it the
 * command says how many would end and changes nothing (exit 2), so that a mistyped or replayed
 * line of a shell's history does not log everyone out (it did until 0.23.0).
 */
async function endAllSessions(io: CommandIo, app: INestApplicationContext, confirmed: boolean): Promise<number> {
  const { SessionMaintenanceService } = await import('../sessions/session-maintenance.service.js');
  const sessions = app.get(SessionMaintenanceService);
  if (!confirmed) {
    const active = await sessions.countActive();
    io.stderr.write(
      `end-all-sessions ends every user's active sessions (${active} now) on every instance at once: nothing ended. ` +
        'Run it again with --confirm to do it\n',
    );
    return 2;
  }
  const ended = await sessions.endAllSessions({ reason: 'revoked_by_admin', event: 'SESSION_REVOKED', metadata: { by: 'cli' } });
  io.stdout.write(`Ended ${ended} active session(s)\n`);
  return 0;
}

async function rotateKeys(io: CommandIo, app: INestApplicationContext, now: boolean): Promise<number> {
  const { AlgorithmMismatchError, KeyRotationService, NextKeyTooNewError } = await import('../keys/key-rotation.service.js');
  let result;
  try {
    result = await app.get(KeyRotationService).rotate('cli', { now });
  } catch (error) {
    if (error instanceof AlgorithmMismatchError || error instanceof NextKeyTooNewError) throw new UsageError(`keys rotate: ${error.message}`);
    throw error;
  }
  const lines = [`Rotated: ${result.current} (${result.algorithm}) signs now; ${result.next} is next`];
  if (result.retiring) lines.push(`${result.retiring.kid} verifies until ${result.retiring.verifyUntil.toISOString()}, then retires`);
  if (result.retired.length) lines.push(`Retired: ${result.retired.join(', ')}`);
  io.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

/** One line per key, oldest first; never a secret. */
async function listKeys(io: CommandIo, app: INestApplicationContext): Promise<number> {
  const { KeyRotationService } = await import('../keys/key-rotation.service.js');
  const iso = (d: Date | null) => d?.toISOString() ?? '-';
  const rows = (await app.get(KeyRotationService).list()).map((k) =>
    [
      k.kid,
      k.algorithm,
      k.state,
      iso(k.createdAt),
      iso(k.activatedAt),
      iso(k.verifyUntil),
      iso(k.retiredAt),
      k.fromJwtSecret ? 'JWT_SECRET' : '',
    ].join('\t'),
  );
  io.stdout.write(`${['kid', 'algorithm', 'state', 'created', 'activated', 'verify_until', 'retired', 'from'].join('\t')}\n${rows.join('\n')}\n`);
  return 0;
}

async function verifyDatabase(io: CommandIo, app: INestApplicationContext, checkpointFile: string | undefined): Promise<number> {
  const { AuditVerifierService } = await import('../audit/audit-verifier.service.js');
  const result = await app.get(AuditVerifierService).verify({ checkpointFile });
  io.stdout.write(verificationReport(result, checkpointFile));
  return result.ok ? 0 : 1;
}

/** The pieces the service shipped to `dir` (AUDIT_SHIP_DIR), in name order, which is seq order. */
async function shippedPieces(dir: string): Promise<string[]> {
  const { SHIPPED_PIECE_NAME } = await import('../audit/audit-export-format.js');
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    throw new UsageError(`audit-verify: ${dir} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const pieces = names.filter((n) => SHIPPED_PIECE_NAME.test(n)).sort();
  if (!pieces.length) throw new UsageError(`audit-verify: ${dir} holds no shipped piece (audit-after-<seq>-through-<seq>.ndjson)`);
  return pieces.map((n) => join(dir, n));
}

/**
 * No database: the key from the configuration is all it needs, and all it reads. The key the
 * log was written with: without one configured (or kept by an earlier development start),
 * development would make one up, and every event would be reported forged (until 0.20.2). Not
 * the other secrets: an investigator verifying a copy on another host is given the audit key
 * alone, and in production the command asked for all four (refused, exit 3, until 0.25.0), or,
 * outside it, wrote a secrets.json of made-up ones where it ran.
 */
async function verifyFiles(io: CommandIo, files: string[]): Promise<number> {
  const { loadSettings } = await import('../config/config.js');
  const { existingSecret } = await import('../config/secrets.js');
  const key = existingSecret(loadSettings(io.env), 'AUDIT_HMAC_KEY');
  if (!key) throw new UsageError('audit-verify --file needs AUDIT_HMAC_KEY, the key the log was written with: none is set');
  const result = await verifyExportFiles(files, key);
  io.stdout.write(fileVerificationReport(result, files));
  return result.ok ? 0 : 1;
}

/**
 * To a new file (removed again if the export fails) or to stdout. An existing file is refused:
 * it may be an earlier piece, or the only copy of a month retention has dropped, and `--out`
 * replaced it (and then removed it when the export failed) until 0.23.0.
 */
async function exportAudit(io: CommandIo, app: INestApplicationContext, request: ExportRequest, out: string | undefined): Promise<number> {
  if (out === undefined) {
    const lines = await openExport(io, app, request);
    if (typeof lines === 'number') return lines;
    await pipeline(lines, io.stdout, { end: false });
    // Every line handed over before the process exits (stdout may be an asynchronous pipe).
    if (io.stdout.writableLength) await once(io.stdout, 'drain');
    return 0;
  }
  let file: FileHandle;
  try {
    // Readable by its owner only, as the archives and shipped pieces are.
    file = await open(out, 'wx', 0o600);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new UsageError(`audit-export: ${out} already exists: nothing written (choose a new name, or remove it first)`);
    throw new UsageError(`audit-export: ${out} cannot be written (${code ?? 'error'})`);
  }
  try {
    const lines = await openExport(io, app, request);
    if (typeof lines === 'number') {
      await file.close();
      await unlink(out);
      return lines;
    }
    // On disk before exit code 0 says it is written, its entry in the directory too: the file
    // may become the only copy of a month retention then drops (until 0.24.2 a crash soon after
    // could leave it empty or gone after a 0).
    await pipeline(lines, file.createWriteStream({ flush: true }));
    await syncFile(dirname(resolve(out)));
  } catch (error) {
    await file.close().catch(() => undefined);
    await unlink(out).catch(() => undefined);
    throw error;
  }
  return 0;
}

/**
 * The export's stream, or the exit code when the service refuses it: an `--after-seq` past the
 * newest event (a usage error, as the route's 400) or a log still being written to after the
 * wait (3, could not run, as the route's 503: try again; 1 until 0.24.1).
 */
async function openExport(io: CommandIo, app: INestApplicationContext, { filter, afterSeq }: ExportRequest): Promise<Readable | number> {
  const { AuditExportService } = await import('../audit/audit-export.service.js');
  const { BadRequestException, ServiceUnavailableException } = await import('@nestjs/common');
  try {
    return await app.get(AuditExportService).open(filter, afterSeq);
  } catch (error) {
    if (error instanceof BadRequestException) {
      const message = (error.getResponse() as { message?: string | string[] }).message ?? error.message;
      throw new UsageError(
        `audit-export: ${([] as string[])
          .concat(message)
          .join('; ')
          .replace(/^afterSeq\b/, '--after-seq')}`,
      );
    }
    if (error instanceof ServiceUnavailableException) {
      io.stderr.write('audit-export: transactions writing audit events were still running after the wait; try again\n');
      return 3;
    }
    throw error;
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
  if (checkpointFile) {
    const damaged = v.fileDamaged;
    lines.push(
      damaged
        ? `  checkpoint file:   ${checkpointFile} (last checkpoint: ${v.fileCheckpointId}, then ${damaged.lines} damaged line(s)${damaged.unterminated ? ', the last without its newline' : ''})`
        : `  checkpoint file:   ${checkpointFile} (last line: checkpoint ${v.fileCheckpointId ?? 'none'})`,
    );
  }
  if (!v.ok) {
    lines.push(`  first broken event: ${v.firstBrokenId ?? '(none stored: see the reason)'}`);
    lines.push(`  reason:            ${v.reason}`);
  }
  return `${lines.join('\n')}\n`;
}

function fileVerificationReport(v: ExportFileVerification, files: string[]): string {
  const filter = v.filter
    ? Object.entries(v.filter)
        .filter(([, value]) => value !== null)
        .map(([name, value]) => `${name}=${value}`)
    : [];
  const lines = [
    `Audit export: ${v.ok ? 'INTACT' : 'BROKEN'}`,
    files.length === 1
      ? `  file:                ${files[0]}`
      : `  files (pieces):      ${files.length}: ${files.length <= 3 ? files.join(', ') : `${files[0]} … ${files[files.length - 1]}`}`,
    `  events:              ${v.lines}`,
    `  links checked:       ${v.linked}`,
    `  authenticated alone: ${v.alone} (the event before them in their chain is not in the file)`,
    `  filter:              ${v.filter ? filter.join(' ') || 'none (whole chains)' : 'unknown (no authentic seal)'}`,
  ];
  if (v.ok && v.throughSeq !== null) lines.push(`  through seq:         ${v.throughSeq} (the next piece: --after-seq ${v.throughSeq})`);
  if (!v.ok) {
    const where = files.length > 1 && v.brokenFile !== null ? ` of ${v.brokenFile}` : '';
    lines.push(`  first broken line:   ${v.brokenLine}${where}${v.brokenId ? ` (event ${v.brokenId})` : ''}`);
    lines.push(`  reason:              ${v.reason}`);
  }
  return `${lines.join('\n')}\n`;
}
