import type { Type } from '@nestjs/common';
import { Reflector } from '@nestjs/core';

type Target = object;

/**
 * A Reflector that answers `getAllAndOverride(key, [handler, class])` once per key and route.
 * Route metadata is fixed once the decorators have run, but reflect-metadata walks the
 * prototype chain on every lookup, and the global guards ask the same questions on every
 * request (is the route public, is it exempt from the request limit, which limit applies).
 * Any other call goes to the wrapped Reflector unchanged.
 */
export class MemoizedReflector extends Reflector {
  private readonly answers = new WeakMap<Target, WeakMap<Target, Map<unknown, unknown>>>();

  constructor(private readonly source: Reflector = new Reflector()) {
    super();
  }

  // One signature for both of Reflector's overloads (by metadata key, by reflectable decorator).
  // Reflector's own parameter types (any key, any function as a target).
  // eslint-disable-next-line @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-function-type
  override getAllAndOverride<TResult = any>(key: any, targets: Array<Type | Function>): TResult {
    if (targets.length !== 2 || !isTarget(targets[0]) || !isTarget(targets[1])) return this.source.getAllAndOverride<TResult>(key, targets);
    const [handler, classRef] = targets as [Target, Target];
    let byClass = this.answers.get(handler);
    if (!byClass) this.answers.set(handler, (byClass = new WeakMap()));
    let byKey = byClass.get(classRef);
    if (!byKey) byClass.set(classRef, (byKey = new Map()));
    if (byKey.has(key)) return byKey.get(key) as TResult;
    const answer = this.source.getAllAndOverride<TResult>(key, targets);
    byKey.set(key, answer);
    return answer;
  }
}

function isTarget(value: unknown): value is Target {
  return typeof value === 'function' || (typeof value === 'object' && value !== null);
}
