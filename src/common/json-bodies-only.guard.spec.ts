import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { UnsupportedMediaTypeException } from '@nestjs/common';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host.js';
import { JsonBodiesOnlyGuard } from './json-bodies-only.guard';

const guard = new JsonBodiesOnlyGuard();

/** What the guard decides for a request of this method, these headers, this parsed body and HTTP version. */
function decide(method: string, headers: Record<string, string>, body?: unknown, httpVersionMajor = 1): 'pass' | 415 {
  const context = new ExecutionContextHost([{ method, headers, body, raw: { httpVersionMajor } }, {}]);
  try {
    guard.canActivate(context);
    return 'pass';
  } catch (error) {
    if (error instanceof UnsupportedMediaTypeException) return 415;
    throw error;
  }
}

const FORM = 'application/x-www-form-urlencoded';

describe('JsonBodiesOnlyGuard', () => {
  it('refuses a body of another type than JSON, however it is framed', () => {
    assert.equal(decide('POST', { 'content-type': FORM, 'content-length': '12' }, { a: '1' }), 415);
    assert.equal(decide('PUT', { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' }, 'x'), 415);
    // HTTP/2 frames carry a body without a Content-Length.
    assert.equal(decide('PATCH', { 'content-type': FORM }, { a: '1' }, 2), 415);
    assert.equal(decide('DELETE', { 'content-type': 'multipart/form-data; boundary=x', 'content-length': '40' }, {}), 415);
  });

  it('refuses a body without a type that a parser of the host took anyway', () => {
    assert.equal(decide('POST', { 'content-length': '5' }, 'hello'), 415);
  });

  it('lets JSON through whatever its parameters and case', () => {
    for (const type of ['application/json', 'application/json; charset=utf-8', 'Application/JSON', ' application/json ;charset=UTF-8']) {
      assert.equal(decide('POST', { 'content-type': type, 'content-length': '2' }, {}), 'pass', type);
    }
  });

  it('lets through what has no body, whatever type it names: GET and HEAD, and HTTP/1 requests that say they have none', () => {
    assert.equal(decide('GET', { 'content-type': FORM, 'content-length': '12' }), 'pass');
    assert.equal(decide('HEAD', { 'content-type': FORM }), 'pass');
    assert.equal(decide('DELETE', { 'content-type': FORM, 'content-length': '0' }), 'pass');
    assert.equal(decide('POST', { 'content-type': FORM }), 'pass');
    assert.equal(decide('POST', {}), 'pass');
  });

  it('leaves other transports alone', () => {
    const rpc = new ExecutionContextHost([{}, {}]);
    rpc.setType('rpc');
    assert.equal(guard.canActivate(rpc), true);
  });
});
