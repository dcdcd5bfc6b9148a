/** Median and spread of samples in milliseconds. */
export function summary(samples: number[]): { median: number; p10: number; p90: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { median: at(0.5), p10: at(0.1), p90: at(0.9) };
}

export function fmt(ms: number): string {
  return `${ms.toFixed(ms < 1 ? 4 : 1)} ms`;
}
