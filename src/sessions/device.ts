import Bowser from 'bowser';

export interface DeviceSummary {
  browser: string | null;
  os: string | null;
  deviceType: string | null;
}

/** A readable summary of a user agent ("Firefox 128 on Windows 10, desktop") via bowser. */
export function describeDevice(userAgent: string | null): DeviceSummary {
  if (!userAgent) return { browser: null, os: null, deviceType: null };
  const parsed = Bowser.parse(userAgent);
  const join = (...parts: Array<string | undefined>) => parts.filter(Boolean).join(' ') || null;
  return {
    browser: join(parsed.browser.name, parsed.browser.version?.split('.')[0]),
    os: join(parsed.os.name, parsed.os.versionName ?? parsed.os.version),
    deviceType: parsed.platform.type ?? null,
  };
}
