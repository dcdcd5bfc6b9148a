import { Injectable, OnModuleInit } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import * as bcrypt from 'bcrypt';
import { createHmac, randomBytes } from 'node:crypto';
import type { AppConfig } from '../config/config';

/** The lowest cost bcrypt makes (and so the lowest a stored hash can have). */
const BCRYPT_MIN_COST = 4;

/** A bcrypt hash as the native package makes it: version, a cost of 4 to 31, 22 characters of salt and 31 of hash. */
const BCRYPT_HASH = /^\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$/;

/**
 * bcrypt reads only the first 72 bytes, so every password is first reduced to
 * HMAC-SHA-256(pepper, password) in base64 (44 bytes): every character counts, and a stolen
 * database alone cannot be cracked without the pepper. The native bcrypt package hashes on
 * libuv's thread pool, leaving the event loop free.
 */
@Injectable()
export class PasswordHasher implements OnModuleInit {
  private readonly pepper: string;
  private readonly cost: number;
  /** Hashes of a random password, by cost: what verifyAgainstNobody and the padding compare with. */
  private readonly dummyHashes = new Map<number, Promise<string>>();

  constructor(config: ConfigService<AppConfig, true>) {
    this.pepper = config.get('PASSWORD_PEPPER', { infer: true });
    this.cost = config.get('BCRYPT_COST', { infer: true });
  }

  onModuleInit(): void {
    // Ready before the first login for an unknown user, so that one is not faster either; and
    // those of every lower cost, which pad a wrong password of an account hashed at one of
    // them (verify): made on its first such login instead, they made it slower than the next,
    // once an instance, a sign that the account exists (until 0.24.2). All of them together
    // cost less than the one of BCRYPT_COST (the costs below it sum to one step less).
    void this.getDummyHash(this.cost);
    for (const cost of paddingCosts(BCRYPT_MIN_COST, this.cost)) void this.getDummyHash(cost);
  }

  hash(password: string): Promise<string> {
    return bcrypt.hash(this.prehash(password), this.cost);
  }

  /**
   * Whether `password` is the one `hash` was made of. A hash of a lower cost than BCRYPT_COST
   * (made before the setting was raised, of an account that has not logged in since) is
   * padded to the current cost's work: after its own compare, one against a dummy hash of each
   * cost from its own up to BCRYPT_COST - 1, since 2^r + 2^r + 2^(r+1) + … + 2^(c-1) = 2^c. So
   * such an account answers a wrong password no faster than an unknown account does (ASVS
   * 6.3.8; until 0.24.0, at BCRYPT_COST raised from 10 to 12, four times faster). The compares
   * run one after the other, as the unknown account's one compare runs on one thread.
   */
  async verify(password: string, hash: string): Promise<boolean> {
    // Not a bcrypt hash (a host's import through UsersService.create: another scheme, or a
    // marker for an account without a password): no password is its, answered after the
    // work an unknown account costs. Until 0.28.0 bcrypt refused it at once and getRounds
    // threw: a fast 500, without LOGIN_FAILED, that told such an account apart.
    if (!BCRYPT_HASH.test(hash)) return this.verifyAgainstNobody(password);
    const prehashed = this.prehash(password);
    const matches = await bcrypt.compare(prehashed, hash);
    for (const cost of paddingCosts(bcrypt.getRounds(hash), this.cost)) await bcrypt.compare(prehashed, await this.getDummyHash(cost));
    return matches;
  }

  /**
   * The cost a stored hash was made at, when it is not BCRYPT_COST's (undefined when it is): a
   * login re-hashes such a password, so that after the setting changes each account costs the
   * same bcrypt work as an unknown one (whose dummy hash has the current cost) from its next
   * login on, and a raised cost protects it.
   */
  staleCostOf(hash: string): number | undefined {
    const rounds = bcrypt.getRounds(hash);
    return rounds === this.cost ? undefined : rounds;
  }

  /** BCRYPT_COST. */
  get currentCost(): number {
    return this.cost;
  }

  /**
   * Spends the same time as verify() when there is no user to verify against, so that an
   * unknown account and a wrong password cannot be told apart by timing (ASVS 6.3.8).
   */
  async verifyAgainstNobody(password: string): Promise<false> {
    await bcrypt.compare(this.prehash(password), await this.getDummyHash(this.cost));
    return false;
  }

  private getDummyHash(cost: number): Promise<string> {
    let hash = this.dummyHashes.get(cost);
    if (!hash) this.dummyHashes.set(cost, (hash = bcrypt.hash(randomBytes(32).toString('base64'), cost)));
    return hash;
  }

  private prehash(password: string): string {
    return createHmac('sha256', this.pepper).update(password, 'utf8').digest('base64');
  }
}

/**
 * The costs of the dummy hashes that pad a compare at `storedCost` to the work of one at
 * `currentCost` (bcrypt's work doubles with each step of cost): none when the hash is at the
 * current cost or above. A hash above it (the setting lowered) stays slower than an unknown
 * account until its next login re-hashes it: padding the unknown accounts instead would need
 * the highest cost stored, which no request knows.
 */
export function paddingCosts(storedCost: number, currentCost: number): number[] {
  const costs: number[] = [];
  for (let cost = storedCost; cost < currentCost; cost++) costs.push(cost);
  return costs;
}
