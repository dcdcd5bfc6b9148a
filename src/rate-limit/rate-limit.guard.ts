import { createHash } from 'node:crypto';
import { CanActivate, ExecutionContext, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import {
  InjectThrottlerOptions,
  normalizeIp,
  ThrottlerException,
  type ThrottlerGenerateKeyFunction,
  type ThrottlerGetTrackerFunction,
  type ThrottlerModuleOptions,
  type ThrottlerOptions,
} from '@nestjs/throttler';
import {
  THROTTLER_BLOCK_DURATION,
  THROTTLER_KEY_GENERATOR,
  THROTTLER_LIMIT,
  THROTTLER_SKIP,
  THROTTLER_TRACKER,
  THROTTLER_TTL,
} from '@nestjs/throttler/dist/throttler.constants';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { withoutPort } from '../common/client-context';
import type { CounterSettings } from './rate-limit-counters';
import { PgThrottlerStorage } from './pg-throttler.storage';
import { isHttp } from '../common/other-transports';

/** Set on a request once a route's limits counted it (see countUncounted). */
const COUNTED = Symbol('sessionary.rateLimitCounted');

/** A setting as @nestjs/throttler takes it: a number, or a function of the request's context. */
type Resolvable = number | ((context: ExecutionContext) => number | Promise<number>);

/**
 * One throttler as it applies to one route: settings made of numbers are resolved once (the
 * same object on every hit); any given as a function are resolved per request, as in the library.
 */
interface RouteThrottler {
  name: string;
  /** What the counter's key starts with: the throttler's name, and the route's for one with @Throttle values of its own. */
  keyPrefix: string;
  settings?: CounterSettings;
  resolve?: (context: ExecutionContext) => Promise<CounterSettings>;
  /** What the route's @Throttle getTracker/generateKey make of the request, counted instead of its client address. */
  counterKey?: (context: ExecutionContext) => Promise<string>;
}

/** A throttler as count() takes it: settings resolved, and the request's key when not its client address. */
interface Counting {
  name: string;
  keyPrefix: string;
  settings: CounterSettings;
  counterKey?: string;
}

/**
 * The general per-IP request limit over every route together, decided synchronously.
 *
 * The rules are @nestjs/throttler's, with the options RateLimitModule gives it (throttlers,
 * skipIf, a string errorMessage) and the library's decorators (@SkipThrottle, @Throttle): a
 * fixed window per client IP, blocked for `blockDuration` once over the limit,
 * X-RateLimit-Limit/Remaining/Reset on every counted answer and Retry-After on its 429. Its
 * ThrottlerGuard decides the same thing through about nine promises per request (an async
 * canActivate, shouldSkip, three resolveValue, handleRequest, getTracker and the storage's
 * increment), and Nest awaits a guard's promise where it takes a boolean as it is: on the hot
 * path that was a measurable share of a request's CPU. Here the storage counts in memory
 * (PgThrottlerStorage.hit) and the route's settings are resolved once, so a request costs a
 * map lookup and one header call. The IP is Fastify's request.ip, which believes
 * X-Forwarded-For only when TRUST_PROXY says so; IPv6 clients count per /64, as in the library.
 */
@Injectable()
export class RateLimitGuard implements CanActivate {
  private readonly throttlers: ThrottlerOptions[];
  private readonly skipIf: ThrottlerOptions['skipIf'];
  private readonly errorMessage: string | undefined;
  /** The module's own throttlers, with no route's values: what a request no route counted counts on. */
  private readonly general: Array<{ name: string; keyPrefix: string; settings: CounterSettings }>;
  /** Per handler, then per class: what applies to the route (an empty list when nothing does). */
  private readonly routes = new WeakMap<object, WeakMap<object, RouteThrottler[]>>();

  constructor(
    @InjectThrottlerOptions() options: ThrottlerModuleOptions,
    private readonly storage: PgThrottlerStorage,
    // Asked once per route (the answers are kept in `routes`).
    private readonly reflector: Reflector,
  ) {
    if (Array.isArray(options)) {
      this.throttlers = options;
    } else {
      this.throttlers = options.throttlers;
      this.skipIf = options.skipIf;
      this.errorMessage = typeof options.errorMessage === 'string' ? options.errorMessage : undefined;
    }
    // Settings given as functions need a route's context to resolve: such a throttler counts
    // only where a route applies it.
    this.general = this.throttlers.flatMap((t) => {
      const name = t.name ?? 'default';
      const { limit, ttl, blockDuration } = t;
      if (typeof limit !== 'number' || typeof ttl !== 'number' || typeof blockDuration === 'function') return [];
      return [{ name, keyPrefix: `${name}:`, settings: settings(name, limit, ttl, blockDuration ?? ttl) }];
    });
  }

  // Not async: Nest takes a guard's boolean as it is, and awaits only a promise.
  canActivate(context: ExecutionContext): boolean | Promise<boolean> {
    // Counted per client address, which only an HTTP request has: a host's other transports
    // (connected with inheritAppConfig) are not counted here.
    if (!isHttp(context)) return true;
    const throttlers = this.throttlersOf(context);
    if (!throttlers.length || this.skipIf?.(context)) return true;
    if (throttlers.every((t) => t.settings && !t.counterKey)) return this.count(context, throttlers as Counting[]);
    return Promise.all(
      throttlers.map(async ({ name, keyPrefix, settings, resolve, counterKey }) => ({
        name,
        keyPrefix,
        settings: settings ?? (await resolve!(context)),
        counterKey: await counterKey?.(context),
      })),
    ).then((resolved) => this.count(context, resolved));
  }

  /**
   * Counts, on the general limit, a refused request that no route's limit counted: one Fastify
   * or the router refused before any guard ran (an unknown route's 404, a body that is not
   * JSON, too large or of another type), or one refused on a route that skips the limit (a
   * wrong metrics token). Returns the 429 to answer instead when the client is over the limit
   * (its headers set); undefined when it may have its answer, or when nothing is to be counted.
   * Until 0.24.2 such requests were never counted: a client refused everywhere else went on
   * getting its 404s and 401s (a token guessed at /metrics at full speed), and each went on
   * into the log's refusal summaries.
   */
  countUncounted(context: ExecutionContext): ThrottlerException | undefined {
    const request = context.switchToHttp().getRequest<FastifyRequest & { [COUNTED]?: true }>();
    if (request[COUNTED] || !this.general.length || this.skipIf?.(context)) return undefined;
    try {
      this.count(context, this.general);
      return undefined;
    } catch (error) {
      if (error instanceof ThrottlerException) return error;
      throw error;
    }
  }

  private count(context: ExecutionContext, throttlers: Counting[]): true {
    const http = context.switchToHttp();
    const request = http.getRequest<FastifyRequest & { [COUNTED]?: true }>();
    // Before any 429 is thrown: the answer to this request must not count it again.
    request[COUNTED] = true;
    const client = normalizeIp(withoutPort(request.ip));
    const reply = http.getResponse<FastifyReply>();
    for (const { name, keyPrefix, settings, counterKey } of throttlers) {
      const decision = this.storage.hit(`${keyPrefix}${counterKey ?? client}`, settings);
      const suffix = name === 'default' ? '' : `-${name}`;
      // While blocked, Remaining is 0 and Reset is the end of the block, like Retry-After, so a
      // client pacing itself by the headers sees when it may send again.
      reply.headers({
        [`X-RateLimit-Limit${suffix}`]: settings.limit,
        [`X-RateLimit-Remaining${suffix}`]: decision.isBlocked ? 0 : Math.max(0, settings.limit - decision.totalHits),
        [`X-RateLimit-Reset${suffix}`]: decision.isBlocked ? decision.timeToBlockExpire : decision.timeToExpire,
      });
      if (decision.isBlocked) {
        reply.header(`Retry-After${suffix}`, decision.timeToBlockExpire);
        throw new ThrottlerException(this.errorMessage);
      }
    }
    return true;
  }

  private throttlersOf(context: ExecutionContext): RouteThrottler[] {
    const handler = context.getHandler();
    const classRef = context.getClass();
    let byClass = this.routes.get(handler);
    if (!byClass) this.routes.set(handler, (byClass = new WeakMap()));
    let resolved = byClass.get(classRef);
    if (!resolved) byClass.set(classRef, (resolved = this.resolve(handler, classRef)));
    return resolved;
  }

  /**
   * The route's throttlers, with @Throttle's values over the module's; skipped ones left out. A
   * route with values of its own (a host application's @Throttle) counts on a counter of its own,
   * as in @nestjs/throttler (whose key names the class and handler): on the shared one, its
   * stricter limit held every route of the address, and blocked them all (until 0.20.2).
   */
  private resolve(handler: object, classRef: object): RouteThrottler[] {
    const targets = [handler, classRef] as Array<() => void>;
    const routeValue = (key: string, name: string): unknown => this.reflector.getAllAndOverride(key + name, targets);
    const applying: RouteThrottler[] = [];
    for (const throttler of this.throttlers) {
      const name = throttler.name ?? 'default';
      if (routeValue(THROTTLER_SKIP, name)) continue;
      const getTracker = routeValue(THROTTLER_TRACKER, name) as ThrottlerGetTrackerFunction | undefined;
      const generateKey = routeValue(THROTTLER_KEY_GENERATOR, name) as ThrottlerGenerateKeyFunction | undefined;
      const own = [THROTTLER_LIMIT, THROTTLER_TTL, THROTTLER_BLOCK_DURATION, THROTTLER_TRACKER, THROTTLER_KEY_GENERATOR].some(
        (key) => routeValue(key, name) !== undefined,
      );
      // A key generateKey makes is the whole key, as in @nestjs/throttler (routes that return one
      // key share one count); a tracker alone counts per route, as the library's default key does.
      const keyPrefix = generateKey ? `${name}:generated:` : own ? `${name}:${routeKey(classRef, handler)}:` : `${name}:`;
      // A route's getTracker and generateKey, as in @nestjs/throttler: what is counted is what they
      // make of the request (an email in the body, say), not its client address (until 0.29.0
      // they were ignored, and such a route counted per address). Kept as a digest, as the
      // library keeps its keys: a tracker is the client's to choose, and its length too.
      const counterKey =
        getTracker || generateKey
          ? async (context: ExecutionContext): Promise<string> => {
              const request = context.switchToHttp().getRequest<FastifyRequest>();
              const tracker = getTracker ? String(await getTracker(request, context)) : normalizeIp(withoutPort(request.ip));
              return digestOf(generateKey ? String(generateKey(context, tracker, name)) : tracker);
            }
          : undefined;
      const limit = (routeValue(THROTTLER_LIMIT, name) ?? throttler.limit) as Resolvable;
      const ttl = (routeValue(THROTTLER_TTL, name) ?? throttler.ttl) as Resolvable;
      const blockDuration = (routeValue(THROTTLER_BLOCK_DURATION, name) ?? throttler.blockDuration) as Resolvable | undefined;
      if (typeof limit === 'number' && typeof ttl === 'number' && typeof blockDuration !== 'function') {
        applying.push({ name, keyPrefix, settings: settings(name, limit, ttl, blockDuration ?? ttl), counterKey });
      } else {
        const valueOf = async (value: Resolvable, context: ExecutionContext) => (typeof value === 'function' ? value(context) : value);
        applying.push({
          name,
          keyPrefix,
          counterKey,
          resolve: async (context) => {
            const resolvedTtl = await valueOf(ttl, context);
            return settings(
              name,
              await valueOf(limit, context),
              resolvedTtl,
              blockDuration === undefined ? resolvedTtl : await valueOf(blockDuration, context),
            );
          },
        });
      }
    }
    return applying;
  }
}

/** A fixed-length digest of what a route's tracker or key generator made (any length a client chose). */
function digestOf(value: string): string {
  return createHash('sha256').update(value).digest('base64url');
}

/** A short, fixed-length name of a route for its own counters' keys (rate_limits.key is at most 128 characters). */
function routeKey(classRef: object, handler: object): string {
  return createHash('sha256')
    .update(`${(classRef as { name?: string }).name ?? ''}.${(handler as { name?: string }).name ?? ''}`)
    .digest('base64url')
    .slice(0, 16);
}

/** The counter's settings, checked as @nestjs/throttler checks them: a misconfigured limit fails loudly, not open. */
function settings(throttler: string, limit: unknown, ttl: unknown, blockDuration: unknown): CounterSettings {
  for (const [what, value] of Object.entries({ limit, ttl, blockDuration })) {
    if (typeof value !== 'number' || !Number.isFinite(value))
      throw new Error(`Rate limit "${throttler}": ${what} must be a finite number, got ${String(value)}`);
  }
  return { limit: limit as number, ttl: ttl as number, blockDuration: blockDuration as number };
}
