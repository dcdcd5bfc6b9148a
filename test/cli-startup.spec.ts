import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';

/**
 * `npm run cli` loads the application (Nest, TypeORM, the pg driver: about a second) only for
 * a command that needs it, so a mistyped command line answers at once (0.12 s, against 0.45 s
 * when 0.20.0's first build loaded Nest's console logger for every command). Tested where no
 * package can be loaded: the built sources copied to a temporary folder with no node_modules
 * on its way up, so any package the usage path reached would fail it with MODULE_NOT_FOUND
 * (ES modules and CommonJS alike), which timing it could only guess at. (Checked: a static
 * import of Nest in run-command.ts, and the logger made and awaited before the command as in
 * 7076615, each fail it. A dynamic import started and never awaited may not fail before the
 * process exits: not seen.)
 */
describe('the CLI answers a usage error without loading a package', () => {
  let dir: string;
  const run = async (...args: string[]) => {
    try {
      const { stdout, stderr } = await promisify(execFile)(process.execPath, [join(dir, 'src', 'cli.js'), ...args], { cwd: dir, env: {} });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const { code, stdout, stderr } = error as { code: number; stdout: string; stderr: string };
      return { code, stdout, stderr };
    }
  };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sessionary-cli-'));
    cpSync(join(__dirname, '..', 'src'), join(dir, 'src'), { recursive: true });
    // The premise: nothing resolves a package from there.
    assert.throws(() => require.resolve('@nestjs/common', { paths: [join(dir, 'src')] }), { code: 'MODULE_NOT_FOUND' });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('prints the usage with exit code 2 for no command, an unknown one, and an unknown option', async () => {
    for (const args of [[], ['make-god', 'x@y.z'], ['audit-verify', '--bogus']]) {
      const result = await run(...args);
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, /^Usage: npm run cli -- <command>$/m, args.join(' '));
      assert.doesNotMatch(result.stderr, /Cannot find (module|package)/);
    }
  });

  it('(the check itself) fails a command that needs the application there', async () => {
    const result = await run('promote-admin', 'x@y.z');
    assert.notEqual(result.code, 0);
    assert.notEqual(result.code, 2);
    assert.match(result.stderr, /Cannot find (module|package) '@nestjs\//);
  });
});
