/** Whether this run is CI's: CI set to anything but empty, 0 or false (.ci/run sets it). */
export function inCi(): boolean {
  return !/^(|0|false)$/i.test(process.env.CI ?? '');
}
