/**
 * Times every statement this process sends (pg's Client.query, promise form), from the call to
 * the answer: so "no statement over 100 ms" is measured as a client sees it, round trip
 * included. A recorder collects only while it is started.
 */
import { Client } from 'pg';

export interface StatementTiming {
  ms: number;
  text: string;
  /** When its answer came (performance.now()); statements are recorded in that order. */
  endedAt: number;
}

let recording: StatementTiming[] | undefined;
let installed = false;

function install(): void {
  if (installed) return;
  installed = true;
  const original = Client.prototype.query as (...args: unknown[]) => unknown;
  (Client.prototype as unknown as { query: (...args: unknown[]) => unknown }).query = function timedQuery(this: Client, ...args: unknown[]) {
    const result = original.apply(this, args);
    const sink = recording;
    if (!sink || !(result instanceof Promise)) return result;
    const started = performance.now();
    const text = typeof args[0] === 'string' ? args[0] : ((args[0] as { text?: string } | undefined)?.text ?? '');
    return result.then((value: unknown) => {
      const endedAt = performance.now();
      sink.push({ ms: endedAt - started, text, endedAt });
      return value;
    });
  };
}

/** Records the statements `run` sends; returns its result, the statements and the elapsed seconds. */
export async function recordStatements<T>(run: () => Promise<T>): Promise<{ result: T; statements: StatementTiming[]; seconds: number }> {
  install();
  const statements: StatementTiming[] = [];
  recording = statements;
  const started = performance.now();
  try {
    const result = await run();
    return { result, statements, seconds: (performance.now() - started) / 1000 };
  } finally {
    recording = undefined;
  }
}

/** The slowest statement, its text shortened to one line. */
export function slowest(statements: StatementTiming[]): { ms: number; text: string } {
  const top = statements.reduce<StatementTiming | undefined>((a, s) => (!a || s.ms > a.ms ? s : a), undefined);
  return top ? { ms: top.ms, text: top.text.replace(/\s+/g, ' ').trim().slice(0, 120) } : { ms: 0, text: '' };
}
