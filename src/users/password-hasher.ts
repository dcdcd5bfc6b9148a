import { Injectable, OnModuleInit } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import * as bcrypt from 'bcrypt';
import { createHmac, randomBytes } from 'node:crypto';
import type { AppConfig } from '../config/config';

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
  private dummyHash: Promise<string> | undefined;

  constructor(config: ConfigService<AppConfig, true>) {
    this.pepper = config.get('PASSWORD_PEPPER', { infer: true });
    this.cost = config.get('BCRYPT_COST', { infer: true });
  }

  onModuleInit(): void {
    // Ready before the first login for an unknown user, so that one is not faster either.
    void this.getDummyHash();
  }

  hash(password: string): Promise<string> {
    return bcrypt.hash(this.prehash(password), this.cost);
  }

  verify(password: string, hash: string): Promise<boolean> {
    return bcrypt.compare(this.prehash(password), hash);
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
    await bcrypt.compare(this.prehash(password), await this.getDummyHash());
    return false;
  }

  private getDummyHash(): Promise<string> {
    this.dummyHash ??= bcrypt.hash(randomBytes(32).toString('base64'), this.cost);
    return this.dummyHash;
  }

  private prehash(password: string): string {
    return createHmac('sha256', this.pepper).update(password, 'utf8').digest('base64');
  }
}
