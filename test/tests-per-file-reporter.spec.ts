import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);

describe('the tests-per-file reporter (test/run-tests.ts fails a run with a spec file that registers no test)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionary-reporter-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("counts each file's tests, a skipped suite as one, and none for an empty suite or an empty file (which the runner reports as passing)", async () => {
    const files = {
      'two.spec.js':
        "const { describe, it } = require('node:test'); describe('s', () => { it('a', () => {}); describe('inner', () => { it('b', () => {}); }); });",
      'top.spec.js': "require('node:test').it('alone', () => {});",
      'empty-suite.spec.js': "require('node:test').describe('nothing here', () => {});",
      // Skipped (as the Swagger UI file skips without a browser): its body never runs, yet it is not empty.
      'skipped-suite.spec.js':
        "const { describe, it } = require('node:test'); describe('needs a browser', { skip: 'no browser' }, () => { it('a', () => {}); });",
      'blank.spec.js': '',
    };
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    const out = join(dir, 'counts');
    const reporter = join(__dirname, 'helpers', 'tests-per-file-reporter.js');
    // Without the variable that makes a `node --test` inside a test report to this run instead of to its reporters.
    const { NODE_TEST_CONTEXT: _inTest, ...runnerEnv } = process.env;
    // Run from the folder, as the runner names an empty file's stand-in by its path from there on Node 22 and 24.
    await run(process.execPath, ['--test', `--test-reporter=${reporter}`, `--test-reporter-destination=${out}`, ...Object.keys(files)], {
      cwd: dir,
      env: runnerEnv,
    });
    const counts = Object.fromEntries(
      readFileSync(out, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as { file: string; tests: number })
        .map(({ file, tests }) => [file, tests]),
    );
    assert.deepEqual(counts, {
      [join(dir, 'two.spec.js')]: 2,
      [join(dir, 'top.spec.js')]: 1,
      [join(dir, 'empty-suite.spec.js')]: 0,
      [join(dir, 'skipped-suite.spec.js')]: 1,
      [join(dir, 'blank.spec.js')]: 0,
    });
  });
});
