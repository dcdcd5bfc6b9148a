/**
 * What every bench script needs around its measures: steps undone in reverse order, once,
 * whether the run ends, fails or is interrupted (databases dropped, children stopped), timed
 * progress lines, the commit measured, and an exit code.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

export const REPO = join(__dirname, '..', '..');

/** Push a step when something is made; remove it (splice) when it was undone early. */
export const undo: Array<() => unknown> = [];
let cleaning: Promise<void> | undefined;
let interrupted = false;

function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const step of undo.splice(0).reverse()) {
      try {
        await step();
      } catch (error) {
        console.error(`cleanup: ${(error as Error).message}`);
      }
    }
  })();
  return cleaning;
}

const started = performance.now();
export function elapsedSeconds(): number {
  return (performance.now() - started) / 1000;
}

export function progress(line: string): void {
  console.log(`[${elapsedSeconds().toFixed(0).padStart(4)} s] ${line}`);
}

export function gitCommit(): string | undefined {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

/**
 * Runs the bench's main, then the cleanup, and exits (1 on failure). On SIGINT or SIGTERM it
 * says `onSignal`, cleans up and exits 130; the run's own failure after that (its children
 * vanished) is no news and is not printed.
 */
export function runBench(main: () => Promise<void>, onSignal: string): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      interrupted = true;
      console.error(`\n${signal}: ${onSignal}`);
      void cleanUp().then(() => process.exit(130));
    });
  }
  void main()
    .then(
      () => 0,
      (error: unknown) => {
        if (!interrupted) console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
        return 1;
      },
    )
    .then(async (code) => {
      await cleanUp();
      process.exit(code);
    });
}
