import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { describe, it } from 'node:test';
import { NodeEnv } from '../config/env.schema';
import { embeddedInProductionWarning } from './embedded-in-production';

describe('embeddedInProductionWarning', () => {
  it('says where production keeps its data on the embedded PostgreSQL, and what to set instead', () => {
    const warning = embeddedInProductionWarning({ NODE_ENV: NodeEnv.Production, DATA_DIR: '.data' });
    assert.ok(warning);
    assert.ok(warning.includes(resolve('.data', 'pg')), warning);
    assert.match(warning, /named volume/);
    assert.match(warning, /Set DATABASE_URL/);
  });

  it('says nothing outside production (the embedded database is the development default)', () => {
    assert.equal(embeddedInProductionWarning({ NODE_ENV: NodeEnv.Development, DATA_DIR: '.data' }), undefined);
    assert.equal(embeddedInProductionWarning({ NODE_ENV: NodeEnv.Test, DATA_DIR: '.data' }), undefined);
  });
});
