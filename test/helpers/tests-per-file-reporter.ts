/**
 * A reporter for Node's test runner (test/run-tests.ts adds it beside the spec and TAP ones):
 * one line per spec file, `{"file": …, "tests": n}`, the number of tests the file registered.
 * A file that registers none (an empty `describe`, a test defined outside the runner's reach, a
 * file left empty) passes as a suite or as the runner's own stand-in test named after the
 * file, so the run's totals cannot tell it from a file whose tests all passed.
 */
import { resolve } from 'node:path';

interface TestEventData {
  name: string;
  file?: string;
  nesting: number;
  details?: { type?: 'suite' | 'test' };
  /** A skipped test or suite (`{ skip: 'why' }`): its body never runs, so a skipped suite registers none of its tests. */
  skip?: string | boolean;
  todo?: string | boolean;
}

type TestEvent = { type: string; data: TestEventData };

/** Node's stand-in for a file that ran no test of its own: named by its path (Node 20) or its path from the working directory (22, 24). */
function isFileStandIn({ name, file, nesting }: TestEventData): boolean {
  return nesting === 0 && file !== undefined && (name === file || resolve(name) === file);
}

async function* testsPerFile(source: AsyncIterable<TestEvent>): AsyncGenerator<string> {
  const counts = new Map<string, number>();
  for await (const event of source) {
    if (event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const { data } = event;
    if (data.file === undefined) continue;
    // A skipped suite stands for the tests it holds (the run's skipped count says it did not
    // run, and CI fails on that): without a browser the Swagger UI file skips its suite.
    const isTest = (data.details?.type !== 'suite' || data.skip !== undefined || data.todo !== undefined) && !isFileStandIn(data);
    counts.set(data.file, (counts.get(data.file) ?? 0) + (isTest ? 1 : 0));
  }
  for (const [file, tests] of counts) yield `${JSON.stringify({ file, tests })}\n`;
}

// Node loads a reporter with import() and calls its default export: a CommonJS module's default is module.exports.
export = testsPerFile;
