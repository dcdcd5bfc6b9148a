import type { LoggerService } from '@nestjs/common';

/** Keeps what an app logs, to look for or count its lines (pass it as createTestApp's `logger`). */
export class CapturingLogger implements LoggerService {
  readonly lines: Array<{ level: string; context: unknown; message: string }> = [];
  log(message: unknown, ...rest: unknown[]) {
    this.push('log', message, rest);
  }
  warn(message: unknown, ...rest: unknown[]) {
    this.push('warn', message, rest);
  }
  error(message: unknown, ...rest: unknown[]) {
    this.push('error', message, rest);
  }
  debug() {}
  verbose() {}
  fatal(message: unknown, ...rest: unknown[]) {
    this.push('fatal', message, rest);
  }
  of(context: string) {
    return this.lines.filter((l) => l.context === context);
  }
  private push(level: string, message: unknown, rest: unknown[]) {
    this.lines.push({ level, context: rest.at(-1), message: String(message) });
  }
}
