import 'reflect-metadata';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isPageRoute } from './security-headers';

describe('isPageRoute', () => {
  it('gives the page headers to the Swagger UI, its assets and its document only', () => {
    for (const route of ['/docs', '/docs/', '/docs/swagger-ui-init.js', '/docs/*', '/docs-json', '/docs-yaml']) {
      assert.equal(isPageRoute('/docs', route), true, route);
    }
    for (const route of [undefined, '/', '/documents', '/docsx', '/api/v1/docs', '/health/live']) {
      assert.equal(isPageRoute('/docs', route), false, String(route));
    }
  });
});
