import { createReadStream } from 'node:fs';
import { belongsToChain, chainedEventOf, GENESIS_HASH, isSharedChain, matchesEventHash, sameMac } from './audit-chain';
import {
  AuditExportFilterFields,
  AuditExportLine,
  AuditExportSeal,
  EVENT_LINE_FIELDS,
  EXPORT_FORMAT,
  EXPORT_FORMAT_RANGED,
  ExportDigest,
  holdsWholeChain,
  ndjsonLine,
  sealMac,
  storedRowOf,
} from './audit-export-format';

/**
 * Verifies an export file offline (`npm run cli -- audit-verify --file F`): only the key, no
 * database. Reads the file a line at a time; what it keeps grows with the number of chains in
 * the file (each chain's last position and hash), not with its lines.
 *
 * - Every event line is authenticated by its own HMAC, recomputed from its fields and prevHash
 *   exactly as the database verifier does.
 * - A line at the position right after the previous line of its chain (or at position 1) is
 *   linked: its prevHash must be that line's hash (or the genesis hash). A line after a gap is
 *   authenticated alone, as a filtered export has gaps by design; in an export that holds whole
 *   chains (no time or type filter, as its seal says; a user filter keeps the user's own chain
 *   whole, not a shared one) a gap is a deleted line.
 * - The seal, the last line, must be authentic (its MAC) and match the lines before it (their
 *   count and digest): lines deleted, inserted or reordered, or a file cut short, are caught here.
 *   A version 2 seal also states the seqs the file runs after and through; its lines must lie
 *   in between.
 *
 * Consecutive exports after a seq (the pieces a scheduled `audit-export --after-seq` ships) are
 * verified as one log by verifyExportFiles: each piece must start where the one before ended
 * (its `afterSeq` that one's `throughSeq`, the same other filters), and each chain's first line
 * in a piece is linked to its last line in the pieces before.
 */

export interface ExportFileVerification {
  ok: boolean;
  /** Event lines read. */
  lines: number;
  /** Lines whose prevHash was checked against the line before them in their chain (or the chain's genesis). */
  linked: number;
  /** Lines after a gap in their chain, authenticated by their own HMAC only. */
  alone: number;
  /** The seal's filter, when the file has an authentic seal. */
  filter: AuditExportFilterFields | null;
  /** The seal's throughSeq (format v2), when the file has an authentic seal. */
  throughSeq: string | null;
  /** Files verified as consecutive pieces (verifyExportFiles), and the one the first broken line is in. */
  files: number;
  brokenFile: string | null;
  /** The first broken line (1-based), its event id when it is an event, and why. */
  brokenLine: number | null;
  brokenId: string | null;
  reason: string | null;
}

/**
 * The file cannot be read, is empty, or its first line is not one an export writes (exit code
 * 2): not an export, so not evidence either way. Once the first line is an export's, a line
 * that is not (not JSON, fields out of shape, too long) is a finding, BROKEN at that line: until
 * 0.24.1 it was this error too, so that a file cut in the middle of a line, one `hash`
 * upper-cased or one `position` set to 0 said "cannot be used" (2) where a cut at a line's end
 * said "broken" (1).
 */
export class ExportFileError extends Error {}

/** A line that is not one an export writes (checkEventShape, checkSealShape): what is wrong with it. */
class MalformedLine extends Error {}

interface Problem {
  line: number;
  id: string | null;
  reason: string;
}

const HEX64 = /^[0-9a-f]{64}$/;
const NULLABLE_STRINGS = ['userId', 'sessionId', 'ipAddress', 'userAgent'] as const;

/** A chain's last line so far: in this file, or (verifyExportFiles) in a piece before it. */
interface ChainTip {
  position: number;
  hash: string;
  line: number;
  /** The file it is in. */
  file: string;
}

/**
 * Verifies consecutive pieces of the log, each written by an export after the seq the one
 * before it ran through, as one: every check of verifyExportFile in each, chains linked across
 * them, and no piece missing, repeated or out of order. Stops at the first broken piece.
 */
export async function verifyExportFiles(paths: string[], key: string): Promise<ExportFileVerification> {
  if (paths.length === 1) return verifyExportFile(paths[0], key);
  const chains = new Map<string, ChainTip>();
  const total: ExportFileVerification = { ...emptyResult(), files: 0 };
  let previous: { path: string; filter: AuditExportFilterFields; throughSeq: string } | undefined;
  /** The first piece's afterSeq: the pieces together hold the events after it. */
  let firstAfterSeq: string | undefined;
  for (const path of paths) {
    const piece = await verifyExportFile(path, key, chains);
    total.files++;
    total.lines += piece.lines;
    total.linked += piece.linked;
    total.alone += piece.alone;
    const broken = (line: number | null, id: string | null, reason: string | null) =>
      Object.assign(total, {
        ok: false,
        filter: piece.filter,
        throughSeq: piece.throughSeq,
        brokenFile: path,
        brokenLine: line,
        brokenId: id,
        reason,
      });
    // With an authentic seal, whether the piece is the one that follows comes first: a piece
    // missing, repeated or out of order also breaks its chains' links, and is the clearer reason.
    const filter = piece.filter;
    if (!filter) return broken(piece.brokenLine, piece.brokenId, piece.reason);
    if (filter.afterSeq === undefined || piece.throughSeq === null) {
      return broken(
        piece.lines + 1,
        null,
        `${path} is not a piece of an incremental export (its seal is version 1, without afterSeq): only such pieces verify together`,
      );
    }
    if (previous) {
      const { afterSeq, ...rest } = filter;
      const { afterSeq: _previousAfter, ...previousRest } = previous.filter;
      if (JSON.stringify(rest) !== JSON.stringify(previousRest)) {
        return broken(piece.lines + 1, null, `${path} has other filters than ${previous.path}: they are pieces of different exports`);
      }
      if (afterSeq !== previous.throughSeq) {
        const what =
          BigInt(afterSeq) > BigInt(previous.throughSeq)
            ? `the events after seq ${previous.throughSeq} up to ${afterSeq} are in no file given: a piece is missing`
            : `it repeats events up to seq ${previous.throughSeq}: a piece was given twice, or out of order`;
        return broken(
          piece.lines + 1,
          null,
          `${path} starts after seq ${afterSeq}, but ${previous.path} runs through ${previous.throughSeq}: ${what}`,
        );
      }
    }
    if (!piece.ok) return broken(piece.brokenLine, piece.brokenId, piece.reason);
    previous = { path, filter, throughSeq: piece.throughSeq };
    firstAfterSeq ??= filter.afterSeq;
  }
  // As one export: after the first piece's afterSeq, through the last one's throughSeq.
  return Object.assign(total, { filter: { ...previous!.filter, afterSeq: firstAfterSeq }, throughSeq: previous!.throughSeq });
}

function emptyResult(): ExportFileVerification {
  return {
    ok: true,
    lines: 0,
    linked: 0,
    alone: 0,
    filter: null,
    throughSeq: null,
    files: 1,
    brokenFile: null,
    brokenLine: null,
    brokenId: null,
    reason: null,
  };
}

/**
 * Verifies one file. `chains` (verifyExportFiles) holds each chain's last line in the pieces
 * before this one, and is left holding its last line in this one.
 */
export async function verifyExportFile(path: string, key: string, chains = new Map<string, ChainTip>()): Promise<ExportFileVerification> {
  const result = emptyResult();
  const digest = new ExportDigest();
  /** The first and last event lines' seq and where they are, for a version 2 seal's range. */
  let firstSeq: { seq: bigint; line: number; id: string } | undefined;
  let lastSeq: { seq: bigint; line: number; id: string } | undefined;
  let failure: Problem | undefined;
  /**
   * The first gap in a user's (or the global) chain and in a shared chain: a deleted line if the
   * seal says such a chain is whole (holdsWholeChain), expected otherwise.
   */
  const gaps: { own?: Problem & { chainKey: string }; shared?: Problem & { chainKey: string } } = {};
  let seal: { value: AuditExportSeal; line: number } | undefined;
  /** The line of a seal out of shape (a finding already): the lines after it still come after the seal. */
  let malformedSeal: number | undefined;
  let lineNo = 0;
  const fail = (problem: Problem) => {
    failure ??= problem;
  };

  const input = createReadStream(path, { encoding: 'utf8' });
  const opened = new Promise<void>((resolve, reject) => {
    input.once('ready', () => resolve());
    input.once('error', reject);
  });
  try {
    await opened;
  } catch (error) {
    throw new ExportFileError(`${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const lines = ndjsonLines(input);
  try {
    for await (const text of lines) {
      lineNo++;
      const sealLine = seal?.line ?? malformedSeal;
      if (sealLine !== undefined) {
        fail({
          line: lineNo,
          id: text === TOO_LONG ? null : idOf(lenientParse(text)),
          reason: `Line ${lineNo} comes after the seal (line ${sealLine}): lines were appended`,
        });
        continue;
      }
      // The first line tells whether the file is an export at all (if not: ExportFileError,
      // exit code 2); after it, a line an export does not write is a finding at that line.
      if (text === TOO_LONG) {
        if (lineNo === 1) throw lineTooLong(lineNo);
        fail({
          line: lineNo,
          id: null,
          reason: `Line ${lineNo} is longer than ${MAX_LINE_CHARS / 1024 / 1024} MiB, more than an audit export writes on a line: it was altered`,
        });
        continue;
      }
      const parsed = lenientParse(text);
      if (parsed === undefined || parsed === NOT_OBJECT) {
        const what = parsed === undefined ? 'is not JSON' : 'is not a JSON object';
        if (lineNo === 1) {
          throw new ExportFileError(
            parsed === undefined
              ? `Line 1 is not JSON: the file is damaged, cut short, or not an audit export`
              : `Line 1 is not a JSON object: the file is not an audit export`,
          );
        }
        fail({
          line: lineNo,
          id: null,
          reason: `Line ${lineNo} ${what}, as every line of an export is: the file was cut short in the middle of a line (an interrupted transfer?) or the line was altered`,
        });
        continue;
      }
      if (lineNo === 1 && !isExportLine(parsed)) {
        throw new ExportFileError(
          isEventLine(parsed)
            ? `Line 1 does not have the fields of an audit export's event (${EVENT_LINE_FIELDS.join(', ')}), nor is it a seal: the file is not an audit export`
            : `Line 1 (the seal): the format ${JSON.stringify(parsed.seal)} is not ${EXPORT_FORMAT} or ${EXPORT_FORMAT_RANGED}: the file is not an audit export this version reads`,
        );
      }
      if (!isEventLine(parsed)) {
        let value: AuditExportSeal;
        try {
          value = checkSealShape(parsed);
        } catch (error) {
          if (!(error instanceof MalformedLine)) throw error;
          malformedSeal = lineNo;
          fail({ line: lineNo, id: null, reason: `Line ${lineNo} (the seal) is not a seal an export writes (${error.message}): it was altered` });
          continue;
        }
        seal = { value, line: lineNo };
        if (ndjsonLine(seal.value) !== `${text}\n`) {
          fail({
            line: lineNo,
            id: null,
            reason: `Line ${lineNo} (the seal) is not the bytes an export writes for it (${unlikeExport}): it was altered`,
          });
        }
        continue;
      }
      let line: AuditExportLine;
      try {
        line = checkEventShape(parsed);
      } catch (error) {
        if (!(error instanceof MalformedLine)) throw error;
        const id = idOf(parsed);
        const named = [id && `event ${id}`, typeof parsed.seq === 'string' && /^[0-9]{1,20}$/.test(parsed.seq) && `seq ${parsed.seq}`].filter(
          Boolean,
        );
        fail({
          line: lineNo,
          id,
          reason: `Line ${lineNo}${named.length ? ` (${named.join(', ')})` : ''}: ${error.message}, not what an audit export writes: it was altered`,
        });
        continue;
      }
      result.lines++;
      digest.add(line.seq, line.hash);
      const id = line.id;
      lastSeq = { seq: BigInt(line.seq), line: lineNo, id };
      firstSeq ??= lastSeq;
      const extra = Object.keys(line).filter((k) => !(EVENT_LINE_FIELDS as readonly string[]).includes(k));
      if (extra.length) {
        fail({ line: lineNo, id, reason: `Line ${lineNo} (event ${id}) has fields no export writes (${extra.join(', ')}): it was altered` });
        continue;
      }
      if (!writtenAsExported(text, line)) {
        fail({ line: lineNo, id, reason: `Line ${lineNo} (event ${id}) is not the bytes an export writes for it (${unlikeExport}): it was altered` });
        continue;
      }
      if (line.chainKey === null || line.position === null || line.prevHash === null || line.hash === null) {
        fail({
          line: lineNo,
          id,
          reason: `Line ${lineNo} (event ${id}) is not in any chain: it was inserted outside the service (or not yet sealed)`,
        });
        continue;
      }
      if (!belongsToChain(line.chainKey, line.userId)) {
        fail({
          line: lineNo,
          id,
          reason: `Line ${lineNo} (event ${id}) names user ${line.userId ?? 'none'} but belongs to chain ${line.chainKey}: it was moved to another user`,
        });
      }
      const previous = chains.get(line.chainKey);
      chains.set(line.chainKey, { position: line.position, hash: line.hash, line: lineNo, file: path });
      if (previous && line.position <= previous.position) {
        fail({
          line: lineNo,
          id,
          reason: `Line ${lineNo} (event ${id}) is at position ${line.position} of chain ${line.chainKey}, after ${lineOf(previous, path)} at position ${previous.position}: lines were reordered or duplicated`,
        });
        continue;
      }
      const linkedTo = line.position === 1 ? GENESIS_HASH : previous?.position === line.position - 1 ? previous.hash : undefined;
      if (linkedTo === undefined) {
        result.alone++;
        // A chain's first line may start past position 1 even in a whole export: retention
        // drops whole months, and the chain then starts at its base. Lines deleted before it
        // are still caught by the seal.
        if (previous) {
          gaps[isSharedChain(line.chainKey) ? 'shared' : 'own'] ??= {
            chainKey: line.chainKey,
            line: lineNo,
            id,
            reason: `Line ${lineNo} (event ${id}) is at position ${line.position} of chain ${line.chainKey}, but the line before it in this chain (${lineOf(previous, path)}) is at position ${previous.position}, and this export holds whole chains: lines between them were deleted`,
          };
        }
      } else {
        result.linked++;
        if (line.prevHash !== linkedTo) {
          const what = line.position === 1 ? 'the start of its chain' : `the line before it in chain ${line.chainKey} (${lineOf(previous!, path)})`;
          fail({
            line: lineNo,
            id,
            reason: `Line ${lineNo} (event ${id}) does not link to ${what}: lines were altered, deleted, inserted or reordered`,
          });
        }
      }
      if (!matchesEventHash(key, line.hash, line.prevHash, chainedEventOf(storedRowOf(line), line.chainKey, line.position))) {
        fail({ line: lineNo, id, reason: `Line ${lineNo} (event ${id}) does not match its hash: it was altered, or written without the key` });
      }
    }
  } catch (error) {
    if (error instanceof ExportFileError) throw error;
    throw new ExportFileError(`${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  } finally {
    input.destroy();
  }

  if (lineNo === 0) throw new ExportFileError(`${path} is empty: not an audit export (one holds its seal at least)`);
  const problems: Problem[] = [];
  if (failure) problems.push(failure);
  if (malformedSeal !== undefined) {
    // Reported at its line (the failure above).
  } else if (!seal) {
    problems.push({
      line: lineNo + 1,
      id: null,
      reason: `The file ends after line ${lineNo} without the export's seal: it was cut short (an interrupted transfer?) or its end was removed`,
    });
  } else {
    const { mac, ...fields } = seal.value;
    if (!sameMac(mac, sealMac(key, fields))) {
      problems.push({
        line: seal.line,
        id: null,
        reason: `The seal (line ${seal.line}) does not match its MAC: it was altered, or another key wrote it`,
      });
    } else {
      result.filter = seal.value.filter;
      result.throughSeq = seal.value.throughSeq ?? null;
      const { afterSeq } = seal.value.filter;
      const { throughSeq } = seal.value;
      if (afterSeq !== undefined && firstSeq && firstSeq.seq <= BigInt(afterSeq)) {
        problems.push({
          line: firstSeq.line,
          id: firstSeq.id,
          reason: `Line ${firstSeq.line} (event ${firstSeq.id}) has seq ${firstSeq.seq}, not after ${afterSeq} as the seal says every line is`,
        });
      }
      if (throughSeq !== undefined && lastSeq && lastSeq.seq > BigInt(throughSeq)) {
        problems.push({
          line: lastSeq.line,
          id: lastSeq.id,
          reason: `Line ${lastSeq.line} (event ${lastSeq.id}) has seq ${lastSeq.seq}, past ${throughSeq}, the seq the seal says the file runs through`,
        });
      }
      if (seal.value.lines !== result.lines || seal.value.digest !== digest.digest()) {
        problems.push({
          line: seal.line,
          id: null,
          reason: `The seal (line ${seal.line}) covers ${seal.value.lines} lines, and the ${result.lines} before it differ from them: lines were deleted, inserted or reordered, or their seq changed`,
        });
      }
      for (const gap of [gaps.own, gaps.shared]) if (gap && holdsWholeChain(seal.value.filter, gap.chainKey)) problems.push(gap);
    }
  }
  const first = problems.sort((a, b) => a.line - b.line)[0];
  if (first) Object.assign(result, { ok: false, brokenLine: first.line, brokenId: first.id, reason: first.reason });
  return result;
}

/** Where a chain's previous line is, for a reason: its line, and its file when that is an earlier piece than `path`. */
function lineOf(tip: ChainTip, path: string): string {
  return tip.file === path ? `line ${tip.line}` : `line ${tip.line} of ${tip.file}`;
}

/** What JSON.parse makes of a line not parsed yet: undefined when it is not JSON, NOT_OBJECT when it is not an object. */
const NOT_OBJECT = Symbol('not a JSON object');

function lenientParse(text: string): Record<string, unknown> | typeof NOT_OBJECT | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return NOT_OBJECT;
  return value as Record<string, unknown>;
}

/** A line's event id to name it by, when it has one that reads as an id (the report prints it). */
function idOf(value: Record<string, unknown> | typeof NOT_OBJECT | undefined): string | null {
  const id = typeof value === 'object' ? value.id : undefined;
  return typeof id === 'string' && /^[0-9A-Za-z-]{1,64}$/.test(id) ? id : null;
}

/**
 * Whether a file's first line makes it an export, whatever the values: a line with every field
 * of an event (checkEventShape then judges them), or a seal of a format this version reads.
 */
function isExportLine(value: Record<string, unknown>): boolean {
  if (!isEventLine(value)) return value.seal === EXPORT_FORMAT || value.seal === EXPORT_FORMAT_RANGED;
  return EVENT_LINE_FIELDS.every((field) => field in value);
}

/**
 * Whether a line is exactly what the export writes for what it holds: its fields in their order,
 * once each, numbers and strings in JSON.stringify's own forms, no spacing. A line parsed alone
 * hid what its bytes say to another reader: a key given twice (JSON.parse keeps the last, a
 * reader keeping the first shows the other value, unverified), or `1.0` read as `1` (until 0.23.0).
 */
function writtenAsExported(text: string, line: AuditExportLine): boolean {
  return ndjsonLine(Object.fromEntries(EVENT_LINE_FIELDS.map((field) => [field, line[field]])) as unknown as AuditExportLine) === `${text}\n`;
}

const unlikeExport = 'a key twice, another order, spacing, or another form of a number or string';

function isEventLine(value: Record<string, unknown>): boolean {
  return !('seal' in value);
}

/** The line as an event, or MalformedLine saying which field is out of shape, and what it holds. */
function checkEventShape(value: Record<string, unknown>): AuditExportLine {
  const bad = (field: string) => new MalformedLine(`${field} is ${field in value ? shown(value[field]) : 'missing'}`);
  const isString = (v: unknown) => typeof v === 'string';
  const isNullableString = (v: unknown) => v === null || typeof v === 'string';
  if (!isString(value.seq) || !/^[1-9][0-9]{0,18}$/.test(value.seq as string)) throw bad('seq');
  for (const field of ['id', 'type', 'createdAt'] as const) if (!isString(value[field])) throw bad(field);
  for (const field of NULLABLE_STRINGS) if (!isNullableString(value[field])) throw bad(field);
  if (!('metadata' in value)) throw bad('metadata');
  if (!isNullableString(value.chainKey)) throw bad('chainKey');
  if (value.position !== null && !(Number.isSafeInteger(value.position) && (value.position as number) >= 1)) throw bad('position');
  for (const field of ['prevHash', 'hash'] as const) {
    if (value[field] !== null && !(isString(value[field]) && HEX64.test(value[field] as string))) throw bad(field);
  }
  const chain = [value.chainKey, value.position, value.prevHash, value.hash];
  if (chain.some((v) => v === null) && !chain.every((v) => v === null)) {
    throw new MalformedLine('chainKey, position, prevHash and hash are not all null or all set');
  }
  return value as unknown as AuditExportLine;
}

/** A field's value as a reason shows it: its JSON, cut short past 80 characters. */
function shown(v: unknown): string {
  const json = JSON.stringify(v) ?? String(v);
  return json.length > 80 ? `${json.slice(0, 77)}...` : json;
}

/** A seq as a seal states it. */
const SEQ_TEXT = /^(0|[1-9][0-9]{0,18})$/;

/** The line as a seal, or MalformedLine saying what is out of shape. */
function checkSealShape(value: Record<string, unknown>): AuditExportSeal {
  const bad = (what: string) => new MalformedLine(what);
  if (value.seal !== EXPORT_FORMAT && value.seal !== EXPORT_FORMAT_RANGED) {
    throw bad(`the format ${JSON.stringify(value.seal)} is not ${EXPORT_FORMAT} or ${EXPORT_FORMAT_RANGED}`);
  }
  const ranged = value.seal === EXPORT_FORMAT_RANGED;
  const filter = value.filter as Record<string, unknown> | null;
  if (typeof filter !== 'object' || filter === null) throw bad('filter is missing');
  for (const field of ['from', 'to', 'userId', 'type']) {
    if (filter[field] !== null && typeof filter[field] !== 'string') throw bad(`filter.${field} is not a string or null`);
  }
  // Exactly the fields its version's MAC covers: any other would be there unauthenticated.
  const sealFields = ['seal', 'filter', ...(ranged ? ['throughSeq'] : []), 'lines', 'digest', 'mac'];
  const filterFields = ['from', 'to', 'userId', 'type', ...(ranged ? ['afterSeq'] : [])];
  const extra = [
    ...Object.keys(value).filter((k) => !sealFields.includes(k)),
    ...Object.keys(filter)
      .filter((k) => !filterFields.includes(k))
      .map((k) => `filter.${k}`),
  ];
  if (extra.length) throw bad(`it has fields no ${value.seal} seal has (${extra.join(', ')})`);
  if (ranged) {
    if (typeof filter.afterSeq !== 'string' || !SEQ_TEXT.test(filter.afterSeq)) throw bad('filter.afterSeq is not a seq');
    if (typeof value.throughSeq !== 'string' || !SEQ_TEXT.test(value.throughSeq)) throw bad('throughSeq is not a seq');
    if (BigInt(value.throughSeq) < BigInt(filter.afterSeq)) throw bad('throughSeq is before filter.afterSeq');
  }
  if (!Number.isSafeInteger(value.lines) || (value.lines as number) < 0) throw bad('lines is not a count');
  for (const field of ['digest', 'mac']) if (typeof value[field] !== 'string') throw bad(`${field} is missing`);
  return value as unknown as AuditExportSeal;
}

/**
 * The longest line read, in characters (UTF-16 code units; at least as many bytes in UTF-8): an
 * export's line holds one event, whose user agent the service bounds (512) and whose metadata
 * the service writes as a few small fields (a host's own, through AuditService.record, is not
 * bounded: keep it far below this), or the seal. The same bound as the shipped pieces' tail reader
 * (shipped-piece-tail.ts, MAX_TAIL_BYTES, 4 MiB): a file whose lines that reader takes is read
 * here too. Past it the file is not an export (or is damaged), and reading on would keep the
 * whole of a file without newlines in memory, a gigabyte as readily as a kilobyte.
 */
const MAX_LINE_CHARS = 4 * 1024 * 1024;

/** What ndjsonLines yields for a line longer than MAX_LINE_CHARS, in place of its text. */
const TOO_LONG = Symbol('a line longer than MAX_LINE_CHARS');

/**
 * The lines of an NDJSON stream: split at "\n" only (a "\r" before it dropped), as the format
 * says. Not node:readline, which since Node 24 also ends a line at U+2028 and U+2029; JSON
 * leaves those unescaped inside strings (a user agent may hold one), so it would cut lines apart.
 * A line longer than MAX_LINE_CHARS is TOO_LONG, as soon as that much of it is read; the rest of
 * it is skipped without being kept, up to the next line.
 */
async function* ndjsonLines(input: AsyncIterable<string>): AsyncGenerator<string | typeof TOO_LONG> {
  let rest = '';
  let skipping = false;
  for await (const chunk of input) {
    let text = chunk;
    if (skipping) {
      const end = text.indexOf('\n');
      if (end < 0) continue;
      skipping = false;
      text = text.slice(end + 1);
    }
    const parts = (rest + text).split('\n');
    rest = parts.pop()!;
    for (const part of parts) yield part.length > MAX_LINE_CHARS ? TOO_LONG : withoutCr(part);
    if (rest.length > MAX_LINE_CHARS) {
      yield TOO_LONG;
      rest = '';
      skipping = true;
    }
  }
  if (!skipping && rest !== '') yield withoutCr(rest);
}

function withoutCr(line: string): string {
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}

function lineTooLong(lineNo: number): ExportFileError {
  return new ExportFileError(
    `Line ${lineNo} is longer than ${MAX_LINE_CHARS / 1024 / 1024} MiB, more than an audit export writes on a line: the file is damaged or not an audit export`,
  );
}
