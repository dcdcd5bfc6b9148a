import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigurationError } from '../config/configuration-error';
import { requireFastify } from './require-fastify';

const adapterOf = (type: string) => ({ getType: () => type });

describe('requireFastify', () => {
  it('refuses another HTTP adapter, naming it and the one to use', () => {
    assert.throws(
      () => requireFastify(adapterOf('express')),
      (error: unknown) =>
        error instanceof ConfigurationError && /needs Nest's Fastify adapter \(@nestjs\/platform-fastify.*runs on express$/.test(error.message),
    );
  });

  it('passes Fastify, and a context without HTTP (the CLI)', () => {
    assert.doesNotThrow(() => requireFastify(adapterOf('fastify')));
    assert.doesNotThrow(() => requireFastify(undefined));
  });
});
