import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { HttpAdapterHost } from '@nestjs/core';
import { ConfigurationError } from '../config/configuration-error';
import { requireFastify } from './require-fastify';

const hostOn = (type: string | undefined) =>
  ({ httpAdapter: type === undefined ? undefined : { getType: () => type } }) as unknown as HttpAdapterHost;

describe('requireFastify', () => {
  it('refuses another HTTP adapter, naming it and the one to use', () => {
    assert.throws(
      () => requireFastify(hostOn('express')),
      (error: unknown) =>
        error instanceof ConfigurationError && /needs Nest's Fastify adapter \(@nestjs\/platform-fastify.*runs on express$/.test(error.message),
    );
  });

  it('passes Fastify, and a context without HTTP (the CLI)', () => {
    assert.doesNotThrow(() => requireFastify(hostOn('fastify')));
    assert.doesNotThrow(() => requireFastify(hostOn(undefined)));
    assert.doesNotThrow(() => requireFastify(undefined));
  });
});
