import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { describeDevice, DEVICE_PART_MAX_LENGTH } from './device';

describe('describeDevice', () => {
  it('summarises a common user agent', () => {
    const ua = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0';
    assert.deepEqual(describeDevice(ua), { browser: 'Firefox 128', os: 'Windows 10', deviceType: 'desktop' });
    assert.deepEqual(describeDevice(null), { browser: null, os: null, deviceType: null });
  });

  it('keeps every part within its documented length, whatever the user agent copies into it', () => {
    const longVersion = `Mozilla/5.0 (Windows NT 10.0; Win64; x64) Gecko/20100101 Firefox/${'1'.repeat(400)}`;
    const unknownBrowser = `${'x'.repeat(300)}/${'9'.repeat(200)} (compatible)`;
    for (const ua of [longVersion, unknownBrowser]) {
      const device = describeDevice(ua);
      for (const part of [device.browser, device.os, device.deviceType]) assert.ok((part ?? '').length <= DEVICE_PART_MAX_LENGTH, `${part?.length}`);
    }
    assert.equal(describeDevice(longVersion).browser, `Firefox ${'1'.repeat(DEVICE_PART_MAX_LENGTH - 'Firefox '.length)}`);
  });
});
