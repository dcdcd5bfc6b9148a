import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Histogram, Registry } from 'prom-client';
import { RequestDurationHistogram } from './request-duration-histogram';

const BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const name = 'test_http_request_duration_seconds';
const help = 'HTTP request duration by method, route template and status code';

const observations: Array<[string, string, number, number]> = [
  ['GET', '/health/live', 200, 0.0004],
  ['GET', '/health/live', 200, 0.001], // on a bound: counted in that bucket (le is inclusive)
  ['GET', '/health/live', 200, 0.0011],
  ['GET', '/api/v1/auth/session', 200, 0.003],
  ['GET', '/api/v1/auth/session', 401, 0.02],
  ['POST', '/api/v1/auth/login', 200, 0.3],
  ['POST', '/api/v1/auth/login', 200, 7], // above every bound: only in +Inf
  ['GET', 'unmatched', 404, 0.0002],
];

/** Exposition lines, sorted: the two may list series in another order, which Prometheus ignores. */
async function exposition(registry: Registry): Promise<string[]> {
  return (await registry.metrics()).split('\n').filter(Boolean).sort();
}

describe('RequestDurationHistogram', () => {
  it("exports exactly what prom-client's Histogram exports for the same observations", async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const fast = new RequestDurationHistogram({ name, help, buckets: BUCKETS, registers: [ours] });
    const reference = new Histogram({ name, help, labelNames: ['method', 'route', 'status'], buckets: BUCKETS, registers: [theirs] });
    for (const [method, route, status, seconds] of observations) {
      fast.observeRequest(method, route, status, seconds);
      reference.observe({ method, route, status: String(status) }, seconds);
    }
    const expected = await exposition(theirs);
    assert.ok(expected.some((line) => line.startsWith(`${name}_bucket{le="+Inf",method="POST"`)));
    assert.deepEqual(await exposition(ours), expected);
    // The JSON form too (what getMetricsAsJSON and cluster aggregation read), exemplars aside.
    const json = async (registry: Registry) =>
      (await registry.getMetricsAsJSON()).map((metric) => ({
        ...metric,
        values: metric.values
          .map((v) => JSON.stringify({ labels: v.labels, value: v.value, metricName: (v as { metricName?: string }).metricName }))
          .sort(),
      }));
    assert.deepEqual(await json(ours), await json(theirs));
  });

  it('starts over on reset, as the registry resets it', async () => {
    const registry = new Registry();
    const fast = new RequestDurationHistogram({ name, help, buckets: BUCKETS, registers: [registry] });
    fast.observeRequest('GET', '/x', 200, 0.002);
    registry.resetMetrics();
    assert.deepEqual(await exposition(registry), [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`]);
    fast.observeRequest('GET', '/x', 200, 0.002);
    assert.ok((await exposition(registry)).includes(`${name}_count{method="GET",route="/x",status="200"} 1`));
  });
});
