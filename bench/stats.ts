/** Median and spread of samples in milliseconds. */
export function summary(samples: number[]): { median: number; p10: number; p90: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  return { median: quantile(sorted, 0.5), p10: quantile(sorted, 0.1), p90: quantile(sorted, 0.9) };
}

/**
 * The q-quantile (0..1) of samples already sorted ascending, interpolated between the two
 * nearest (R's and NumPy's default: the median of an even count is the mean of the middle two;
 * until 0.24.2 it was the upper one, which leaned every "at least" goal toward met); NaN for none.
 */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (!sorted.length) return NaN;
  const at = (sorted.length - 1) * Math.min(1, Math.max(0, q));
  const below = Math.floor(at);
  const above = Math.min(sorted.length - 1, below + 1);
  return sorted[below] + (sorted[above] - sorted[below]) * (at - below);
}

export function median(samples: number[]): number {
  return quantile(
    [...samples].sort((a, b) => a - b),
    0.5,
  );
}

export function fmt(ms: number): string {
  return `${ms.toFixed(ms < 1 ? 4 : 1)} ms`;
}
