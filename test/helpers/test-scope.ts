import { rmSync } from 'node:fs';
import { after, afterEach } from 'node:test';
import type { TestApp } from './test-app';

/**
 * For a file that opens many apps (call it at the file's top level): apps pushed on `opened`
 * are closed after each test (a dozen apps open at once trip Node's listener-leak warning: each
 * adds signal handlers), directories pushed on `scratch` are removed after the file.
 */
export function appsClosedAfterEachTest(): { opened: TestApp[]; scratch: string[] } {
  const opened: TestApp[] = [];
  const scratch: string[] = [];
  afterEach(async () => {
    for (const t of opened.splice(0)) await t.close();
  });
  after(() => {
    for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
  });
  return { opened, scratch };
}
