import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { type Browser, chromium, type Locator, type Page } from 'playwright-core';
import { inCi } from './helpers/ci';
import { createTestApp, TestApp } from './helpers/test-app';

/** Debian's chromium; `.ci/run` installs it when it is missing. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
// Outside CI a machine without Chromium skips this file, saying so; in CI it must run.
const missing = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`;
if (missing && inCi()) throw new Error(`the Swagger UI test needs a browser in CI: ${missing}`);

/** A host name that is not localhost, as when a container is reached from another machine. */
const HOST = 'sessionary.test';

/**
 * Swagger UI in a real browser, as someone exploring the API uses it: open /docs over plain HTTP
 * by a host name other than localhost, register and log in with the documented examples through
 * "Try it out", Authorize with the token, call GET /users/me, reload, call it again.
 */
describe('Swagger UI in a headless browser (e2e)', { skip: missing, timeout: 120_000 }, () => {
  let t: TestApp;
  let browser: Browser;
  let origin: string;

  before(async () => {
    t = await createTestApp();
    await t.app.listen(0, '127.0.0.1');
    origin = `http://${HOST}:${(t.app.getHttpServer().address() as AddressInfo).port}`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // Root in CI containers has no user namespace for the sandbox; the page is our own.
      args: ['--no-sandbox', `--host-resolver-rules=MAP ${HOST} 127.0.0.1`],
    });
  });
  after(async () => {
    await browser?.close();
    await t?.close();
  });

  /**
   * Presses a button by a DOM click event on the element itself, not by a pointer at its
   * coordinates: Playwright's pointer click first waits for the element to hold still over two
   * animation frames, and once on a loaded CI box (Node 22's pass) the renderer's frames stalled
   * for the whole 30 s. What this test checks is the page and the API together, not the layout.
   */
  async function press(button: Locator): Promise<void> {
    await button.waitFor({ state: 'visible' });
    await button.dispatchEvent('click');
  }

  function operation(page: Page, method: string, path: string) {
    return page.locator(`.opblock-${method}:has(.opblock-summary-path[data-path="${path}"])`);
  }

  /** Opens an operation, presses "Try it out" and "Execute"; answers the status and body shown. */
  async function execute(page: Page, method: string, path: string): Promise<{ status: number; body: string }> {
    const op = operation(page, method, path);
    if (!(await op.locator('.opblock-body').isVisible())) await press(op.locator('button.opblock-summary-control'));
    const tryOut = op.locator('button.try-out__btn');
    if ((await tryOut.textContent())?.trim() === 'Try it out') await press(tryOut);
    await press(op.locator('button.execute'));
    const status = op.locator('.live-responses-table .response .response-col_status').first();
    await status.waitFor();
    const body = (await op.locator('.live-responses-table .response-col_description pre').first().textContent()) ?? '';
    const answer = { status: Number((await status.textContent())?.trim()), body };
    await press(op.locator('button.btn-clear')); // the next Execute shows its own answer
    return answer;
  }

  it('registers, logs in with the examples, authorizes and reads /users/me, also after a reload, with no console error', async () => {
    const page = await browser.newPage();
    const problems: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(`console: ${message.text()}`);
    });
    page.on('pageerror', (error) => problems.push(`page: ${error.message}`));
    page.on('requestfailed', (request) => problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`));

    await page.goto(`${origin}/docs`);
    await page.locator('.swagger-ui .opblock').first().waitFor();

    const registered = await execute(page, 'post', '/api/v1/auth/register');
    assert.equal(registered.status, 201, registered.body);
    const loggedIn = await execute(page, 'post', '/api/v1/auth/login');
    assert.equal(loggedIn.status, 200, loggedIn.body);
    const { accessToken } = JSON.parse(loggedIn.body) as { accessToken: string };
    assert.match(accessToken, /^[\w-]+\.[\w-]+\.[\w-]+$/);

    await press(page.locator('.scheme-container button.authorize'));
    const dialog = page.locator('.dialog-ux');
    await dialog.locator('input[type="text"]').fill(accessToken);
    await press(dialog.locator('button.authorize'));
    await press(dialog.locator('button.btn-done'));

    const me = await execute(page, 'get', '/api/v1/users/me');
    assert.equal(me.status, 200, me.body);
    assert.equal((JSON.parse(me.body) as { username: string }).username, 'ada_l');

    // persistAuthorization: the token survives a reload.
    await page.reload();
    await page.locator('.swagger-ui .opblock').first().waitFor();
    const again = await execute(page, 'get', '/api/v1/users/me');
    assert.equal(again.status, 200, again.body);

    assert.deepEqual(problems, []);
    await page.close();
  });
});
