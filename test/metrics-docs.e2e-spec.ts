import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTestApp, TestApp } from './helpers/test-app';

/** The README's table of metrics: the first column's names, between "## Metrics" and the next section. */
function documentedMetrics(): Map<string, string> {
  const readme = readFileSync(join(__dirname, '..', '..', 'README.md'), 'utf8');
  const section = /\n## Metrics\n([\s\S]*?)\n## /.exec(readme)?.[1] ?? '';
  const rows = new Map<string, string>();
  for (const [, name, type] of section.matchAll(/^\| `(sessionary_[a-z_]+)` \| (counter|gauge|histogram) \|/gm)) rows.set(name, type);
  return rows;
}

/**
 * Every metric the service serves is in the README's table, with its type, and the table lists
 * none it does not serve: an operator reads there what to alert on.
 */
describe("the README's table of metrics against /metrics (e2e)", () => {
  let t: TestApp;
  before(async () => {
    t = await createTestApp();
  });
  after(async () => {
    await t.close();
  });

  it('lists every sessionary_ metric the service serves, with its type, and no other', async () => {
    const text = (await t.http.get('/metrics')).text;
    const served = new Map<string, string>();
    const help = new Map<string, string>();
    for (const [, name, type] of text.matchAll(/^# TYPE (sessionary_[a-z_]+) (\w+)$/gm)) served.set(name, type);
    for (const [, name, line] of text.matchAll(/^# HELP (sessionary_[a-z_]+) (.*)$/gm)) help.set(name, line);
    assert.ok(served.size >= 20, `the scrape served the service's metrics (${served.size})`);
    const documented = documentedMetrics();
    const missing = [...served].filter(([name]) => !documented.has(name)).map(([name, type]) => `| \`${name}\` | ${type} | ${help.get(name)} |`);
    assert.deepEqual(missing, [], 'served but not in the README');
    assert.deepEqual(
      [...documented.keys()].filter((name) => !served.has(name)),
      [],
      'in the README but not served',
    );
    assert.deepEqual(
      [...served].filter(([name, type]) => documented.get(name) !== type),
      [],
      'documented with another type',
    );
  });
});
