import { Module } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import type { AppConfig } from '../config/config';
import { loadConfig } from '../config/config';
import { ENV_VARIABLES, Env } from '../config/env.schema';

/** The validated configuration of one Sessionary module (an AppConfig). */
export const SESSIONARY_CONFIG = 'SESSIONARY_CONFIG';

/** `SESSION_IDLE_TTL` -> `sessionIdleTtl`. */
type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}` ? `${Lowercase<Head>}${Capitalize<CamelCase<Tail>>}` : Lowercase<S>;

/**
 * Every setting of the configuration table, named in camelCase (`SESSION_IDLE_TTL` is
 * `sessionIdleTtl`), with the same defaults and validation. `nodeEnv` defaults to the
 * process's NODE_ENV.
 */
export type SessionaryOptions = { [K in keyof Env as CamelCase<K & string>]?: OptionValue<Env[K]> } & {
  /** Required: the PostgreSQL server (the module never starts an embedded one). */
  databaseUrl: string;
};

/** An enum-typed setting (NODE_ENV) also takes its values as plain strings: `nodeEnv: 'production'`. */
type OptionValue<T> = T extends string ? T | `${T}` : T;

const camelToEnv = (key: string) => key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();

/** Validates options into the AppConfig the modules read, exactly as the service validates its environment. */
export function configFromOptions(options: SessionaryOptions): AppConfig {
  const known = new Set(ENV_VARIABLES);
  const raw: Record<string, string | undefined> = { NODE_ENV: process.env.NODE_ENV };
  for (const [key, value] of Object.entries(options)) {
    const name = camelToEnv(key);
    if (!known.has(name)) throw new Error(`Sessionary: unknown option ${key}`);
    if (value !== undefined) raw[name] = String(value);
  }
  if (!raw.DATABASE_URL) throw new Error('Sessionary: the databaseUrl option is required');
  return loadConfig(raw);
}

/**
 * A ConfigService over one Sessionary configuration, that never reads process.env. Every
 * Sessionary module imports it instead of relying on a global ConfigModule, so a host
 * application's own ConfigModule (global or not) and Sessionary's never see each other's values.
 */
@Module({
  providers: [
    {
      provide: ConfigService,
      inject: [SESSIONARY_CONFIG],
      useFactory: (config: AppConfig) => {
        const service = new ConfigService<AppConfig, true>(config);
        // What ConfigModule.forRoot({ skipProcessEnv: true }) sets (a private setter of the class).
        (service as unknown as { skipProcessEnv: boolean }).skipProcessEnv = true;
        return service;
      },
    },
  ],
  exports: [ConfigService],
})
export class SessionaryConfigModule {}
