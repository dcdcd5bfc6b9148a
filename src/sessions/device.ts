import Bowser from 'bowser';

export interface DeviceSummary {
  browser: string | null;
  os: string | null;
  deviceType: string | null;
}

/**
 * The longest part of a summary. Bowser's names are short, but a version (and, for an unknown
 * browser, the name itself) is copied from the user agent: a crafted one would otherwise make a
 * "browser" hundreds of characters long.
 */
export const DEVICE_PART_MAX_LENGTH = 64;

/** A readable summary of a user agent ("Firefox 128 on Windows 10, desktop") via bowser. */
export function describeDevice(userAgent: string | null): DeviceSummary {
  if (!userAgent) return { browser: null, os: null, deviceType: null };
  const parsed = Bowser.parse(userAgent);
  const join = (...parts: Array<string | undefined>) => parts.filter(Boolean).join(' ').slice(0, DEVICE_PART_MAX_LENGTH) || null;
  return {
    browser: join(parsed.browser.name, parsed.browser.version?.split('.')[0]),
    os: join(parsed.os.name, parsed.os.versionName ?? parsed.os.version),
    deviceType: join(parsed.platform.type),
  };
}
