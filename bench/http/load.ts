/**
 * One autocannon run against one target, measured by this process itself: the rate of 2xx
 * answers from the first request to the last response (autocannon's own clock rounds to its 1 s
 * ticks; until 0.24.2 every answer counted, so a run that failed fast read as a fast one), the
 * latency percentiles from every response's exact time.
 */
import autocannon from 'autocannon';
import type { IncomingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import { quantile } from '../stats';

export interface LoadOptions {
  url: string;
  connections: number;
  /** Either a duration in seconds, or exactly this many requests. */
  seconds?: number;
  amount?: number;
  method?: 'GET' | 'POST';
  body?: string;
  headers?: IncomingHttpHeaders;
  /** Per connection, before its first request: its headers or its requests (see refresh chains). */
  setupClient?: (client: autocannon.Client) => void;
}

export interface LoadResult {
  requests: number;
  seconds: number;
  rps: number;
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  statusCodes: Record<string, number>;
}

let current: autocannon.Instance | undefined;

/** Stops the run in progress (Ctrl-C). */
export function stopLoad(): void {
  current?.stop();
}

export function load(options: LoadOptions): Promise<LoadResult> {
  const latencies: number[] = [];
  let succeeded = 0;
  let lastResponse = 0;
  const start = performance.now();
  return new Promise((resolve, reject) => {
    const instance = autocannon(
      {
        url: options.url,
        connections: options.connections,
        duration: options.seconds ?? 10,
        amount: options.amount,
        method: options.method ?? 'GET',
        body: options.body,
        headers: options.headers,
        setupClient: options.setupClient,
        timeout: 30,
      },
      (error, result) => {
        current = undefined;
        if (error) return reject(error instanceof Error ? error : new Error(String(error)));
        const seconds = (lastResponse - start) / 1000;
        latencies.sort((a, b) => a - b);
        const statusCodes: Record<string, number> = {};
        for (const [code, stat] of Object.entries(result.statusCodeStats ?? {})) statusCodes[code] = stat.count ?? 0;
        resolve({
          requests: latencies.length,
          seconds,
          rps: seconds > 0 ? succeeded / seconds : 0,
          p50: quantile(latencies, 0.5),
          p99: quantile(latencies, 0.99),
          non2xx: result.non2xx,
          errors: result.errors,
          timeouts: result.timeouts,
          statusCodes,
        });
      },
    );
    current = instance;
    instance.on('response', (_client, status, _bytes, responseTime) => {
      latencies.push(responseTime);
      if (status >= 200 && status < 300) succeeded++;
      lastResponse = performance.now();
    });
  });
}

/** One connection's refresh token: each answer's new token is the next request's. */
export interface RefreshChain {
  refreshToken: string;
  /** The latest access token of the chain's session: to end it if the chain must start again. */
  accessToken: string;
  /** A request went out whose answer has not come back: its token is spent, the next unknown. */
  inFlight: boolean;
  /** An answer other than 200: the chain has no usable token until it logs in again. */
  broken: boolean;
}

/**
 * Per-connection chains for POST /auth/refresh. A refresh token works once and reuse ends the
 * session, so a fixed body cannot be replayed: each connection takes a chain and sends the
 * token from the previous answer. Runs must use `amount` (a connection then stops after an
 * answer, never with one in flight) so that every chain is usable in the next round.
 */
export function refreshChains(chains: RefreshChain[], path: string): (client: autocannon.Client) => void {
  let next = 0;
  return (client) => {
    const chain = chains[next++ % chains.length];
    client.setRequests([
      {
        method: 'POST',
        path,
        headers: { 'content-type': 'application/json' },
        setupRequest: (request) => {
          if (chain.inFlight) chain.broken = true;
          chain.inFlight = true;
          return { ...request, body: JSON.stringify({ refreshToken: chain.refreshToken }) };
        },
        onResponse: (status, body) => {
          chain.inFlight = false;
          if (status !== 200) {
            chain.broken = true;
            return;
          }
          const tokens = JSON.parse(body) as { accessToken: string; refreshToken: string };
          chain.refreshToken = tokens.refreshToken;
          chain.accessToken = tokens.accessToken;
        },
      },
    ]);
  };
}
