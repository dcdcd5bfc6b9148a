import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BadRequestException } from '@nestjs/common';
import { toAuditFilter } from './audit-query.dto';

const messageOf = (fn: () => unknown): unknown => {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof BadRequestException);
    return (error.getResponse() as { message: unknown }).message;
  }
  return undefined;
};

describe('toAuditFilter', () => {
  it('refuses dates and times that do not exist, which Date would roll over', () => {
    for (const to of ['2026-02-31', '2026-02-29', '2026-04-31T00:00Z', '2026-01-01T24:00:00Z', '2026-01-01T25:00:00Z', '2026-00-10', '2026-01-00']) {
      assert.deepEqual(
        messageOf(() => toAuditFilter({ to }, undefined)),
        ['to is not a valid date'],
        to,
      );
    }
    assert.deepEqual(
      messageOf(() => toAuditFilter({ from: '2026-13-01' }, undefined)),
      ['from is not a valid date'],
    );
  });

  it('takes every real instant, with its offset', () => {
    assert.equal(toAuditFilter({ from: '2024-02-29' }, undefined).from?.toISOString(), '2024-02-29T00:00:00.000Z');
    assert.equal(toAuditFilter({ to: '2026-12-31T23:59:59.999999+02:00' }, undefined).to?.toISOString(), '2026-12-31T21:59:59.999Z');
    assert.equal(toAuditFilter({ to: '2026-01-31t00:00z' }, undefined).to?.toISOString(), '2026-01-31T00:00:00.000Z');
  });

  it('refuses from after to, and keeps the user and type', () => {
    assert.deepEqual(
      messageOf(() => toAuditFilter({ from: '2026-02-01', to: '2026-01-01' }, undefined)),
      ['from must not be after to'],
    );
    assert.deepEqual(toAuditFilter({ type: 'LOGIN' }, 'u'), { userId: 'u', type: 'LOGIN', from: undefined, to: undefined });
  });
});
