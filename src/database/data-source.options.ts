import pg, { Client, ClientConfig } from 'pg';
import { DataSourceOptions } from 'typeorm';
import { AuditEventEntity } from '../audit/audit-event.entity';
import { RotatedRefreshTokenEntity } from '../sessions/rotated-refresh-token.entity';
import { SessionEntity } from '../sessions/session.entity';
import { UserEntity } from '../users/user.entity';
import { TypeOrmNestLogger } from './typeorm-logger';
import { InitialSchema1764201600000 } from './migrations/1764201600000-InitialSchema';
import { LoginThrottleAndRateLimits1764205200000 } from './migrations/1764205200000-LoginThrottleAndRateLimits';
import { AuditTypeIndex1764208800000 } from './migrations/1764208800000-AuditTypeIndex';
import { LoginKnownClients1764212400000 } from './migrations/1764212400000-LoginKnownClients';
import { SessionChangeNotifications1764900000000 } from './migrations/1764900000000-SessionChangeNotifications';
import { ScheduledJobRuns1764903600000 } from './migrations/1764903600000-ScheduledJobRuns';
import { AuditChain1765000000000 } from './migrations/1765000000000-AuditChain';
import { AuditPartitions1765100000000 } from './migrations/1765100000000-AuditPartitions';
import { AuditTimeIndexes1765200000000 } from './migrations/1765200000000-AuditTimeIndexes';
import { SessionDeleteNotifyActiveOnly1765300000000 } from './migrations/1765300000000-SessionDeleteNotifyActiveOnly';
import { AuditHeadTimes1765400000000 } from './migrations/1765400000000-AuditHeadTimes';
import { SessionAuthTime1765500000000 } from './migrations/1765500000000-SessionAuthTime';
import { AuditBaseSets1765700000000 } from './migrations/1765700000000-AuditBaseSets';
import { AuditBoundedIndex1765800000000 } from './migrations/1765800000000-AuditBoundedIndex';
import { AuditEventsOutliveUsers1765900000000 } from './migrations/1765900000000-AuditEventsOutliveUsers';
import { AuditUserTimeIndexes1766000000000 } from './migrations/1766000000000-AuditUserTimeIndexes';
import { AuditAppendOnly1766100000000 } from './migrations/1766100000000-AuditAppendOnly';
import { AuditBaseSetsSettledSeq1766200000000 } from './migrations/1766200000000-AuditBaseSetsSettledSeq';
import { AuditCheckpointHeads1766300000000 } from './migrations/1766300000000-AuditCheckpointHeads';
import { AuditCheckpointBuckets1766400000000 } from './migrations/1766400000000-AuditCheckpointBuckets';
import { AuditCheckpointHeadTimes1766500000000 } from './migrations/1766500000000-AuditCheckpointHeadTimes';
import { SessionExpiredEndNotifySkip1766600000000 } from './migrations/1766600000000-SessionExpiredEndNotifySkip';
import { AuditUserIndexMerged1766700000000 } from './migrations/1766700000000-AuditUserIndexMerged';
import { AuditUserTypeIndex1766800000000 } from './migrations/1766800000000-AuditUserTypeIndex';
import { AuditShipProgress1766900000000 } from './migrations/1766900000000-AuditShipProgress';
import { AuditTruncateRefused1767000000000 } from './migrations/1767000000000-AuditTruncateRefused';
import { CounterKeysKeyed1767100000000 } from './migrations/1767100000000-CounterKeysKeyed';
import { AuditSealClosedAndOldSessionId1767200000000 } from './migrations/1767200000000-AuditSealClosedAndOldSessionId';
import { SigningKeyRingMade1767300000000 } from './migrations/1767300000000-SigningKeyRingMade';
import { LoginKnownClientsAccount1767400000000 } from './migrations/1767400000000-LoginKnownClientsAccount';
import { AccessTokenLifetimes1767500000000 } from './migrations/1767500000000-AccessTokenLifetimes';
import { SigningKeys1765600000000 } from './migrations/1765600000000-SigningKeys';

export const ENTITIES = [UserEntity, SessionEntity, RotatedRefreshTokenEntity, AuditEventEntity];
// Listed explicitly (not a glob) so the same list works from src, dist and the test build.
export const MIGRATIONS = [
  InitialSchema1764201600000,
  LoginThrottleAndRateLimits1764205200000,
  AuditTypeIndex1764208800000,
  LoginKnownClients1764212400000,
  SessionChangeNotifications1764900000000,
  ScheduledJobRuns1764903600000,
  AuditChain1765000000000,
  AuditPartitions1765100000000,
  AuditTimeIndexes1765200000000,
  SessionDeleteNotifyActiveOnly1765300000000,
  AuditHeadTimes1765400000000,
  SessionAuthTime1765500000000,
  SigningKeys1765600000000,
  AuditBaseSets1765700000000,
  AuditBoundedIndex1765800000000,
  AuditEventsOutliveUsers1765900000000,
  AuditUserTimeIndexes1766000000000,
  AuditAppendOnly1766100000000,
  AuditBaseSetsSettledSeq1766200000000,
  AuditCheckpointHeads1766300000000,
  AuditCheckpointBuckets1766400000000,
  AuditCheckpointHeadTimes1766500000000,
  SessionExpiredEndNotifySkip1766600000000,
  AuditUserIndexMerged1766700000000,
  AuditUserTypeIndex1766800000000,
  AuditShipProgress1766900000000,
  AuditTruncateRefused1767000000000,
  CounterKeysKeyed1767100000000,
  AuditSealClosedAndOldSessionId1767200000000,
  SigningKeyRingMade1767300000000,
  LoginKnownClientsAccount1767400000000,
  AccessTokenLifetimes1767500000000,
];

/**
 * pg's Client that always has an 'error' listener. pg-pool listens only while a client is
 * idle and TypeORM only while a query runner holds it, and a client with no listener turns
 * the server's FATAL (a restart's 57P01) into an unhandled 'error' event that ends the
 * process (seen in the multi-instance restart test). The failure still reaches whoever uses
 * the client next: its query fails as the database being unavailable (503).
 */
class ListenedClient extends Client {
  constructor(config?: string | ClientConfig) {
    super(config);
    this.on('error', () => undefined);
  }
}

/**
 * One definition for the app, the TypeORM CLI and the tests. Never `synchronize`. `poolMax`:
 * DATABASE_POOL_MAX; `connectionLifetime`: DATABASE_CONNECTION_LIFETIME (0: kept until it breaks).
 */
export function dataSourceOptions(
  databaseUrl: string,
  { poolMax = 20, connectionLifetime = 0 }: { poolMax?: number; connectionLifetime?: number } = {},
): DataSourceOptions {
  return {
    type: 'postgres',
    // This package's pg, not whichever `require('pg')` from TypeORM's folder finds: TypeORM is
    // a peer dependency (the host's copy), and a host on another pg major would otherwise have
    // its pg's pool run our ListenedClient.
    driver: pg,
    url: databaseUrl,
    entities: ENTITIES,
    migrations: MIGRATIONS,
    migrationsTableName: 'migrations',
    // Each in its own transaction unless it says otherwise (one that builds indexes
    // CONCURRENTLY cannot run in one): the TypeORM CLI's default would be one for all.
    migrationsTransactionMode: 'each',
    migrationsRun: false, // run under an advisory lock by runMigrationsLocked()
    synchronize: false,
    // TypeORM's driver otherwise runs CREATE EXTENSION "uuid-ossp" on connecting (the entities
    // have uuid columns), before the lock and the schema check: in a schema it then refused, or
    // with no migration at all. The schema needs no extension (gen_random_uuid() is built in).
    installExtensions: false,
    // Not 'error' or 'query': TypeORM would log statement parameters, which include password hashes.
    logging: ['warn', 'migration'],
    // Through Nest's logger (LOG_FORMAT, LOG_LEVEL, masking), with the same kinds.
    logger: new TypeOrmNestLogger(['warn', 'migration']),
    // pg-pool emits 'error' for every idle connection that dies (all of them when the server
    // stops); a listener must exist or the process crashes. TypeORM's default one warns once
    // per connection; the app's DatabaseOutageMonitor adds its own and logs an outage once.
    poolErrorHandler: () => undefined,
    extra: {
      Client: ListenedClient,
      max: poolMax,
      // pg-pool closes a connection this old once it is idle (or released), and opens another
      // when needed: the pool follows the server a failover made current, as new connections do.
      maxLifetimeSeconds: connectionLifetime,
      // How long a request may wait for a connection, new or from the pool. A refused
      // connection fails at once anyway; this bounds the other outages (a black-holed host, a
      // server that accepts but does not answer, a pool exhausted by stuck queries), so that
      // clients get their 503 + Retry-After in 2 s rather than piling up for 5. A healthy
      // connect on a LAN takes milliseconds, and the readiness ping uses the same 2 s.
      connectionTimeoutMillis: 2000,
      statement_timeout: 15000,
      application_name: 'sessionary',
    },
  };
}

/**
 * The TypeORM CLI's options (`npm run migration:*`, src/database/data-source.ts): the app's,
 * without the pool's statement_timeout, which is meant for requests. A migration over a large
 * table takes as long as it takes (at boot, runMigrationsLocked turns it off the same way).
 */
export function cliDataSourceOptions(databaseUrl: string): DataSourceOptions {
  // TypeORM's own console logger: its CLI sets the kinds it prints (migration:show's list is
  // schema-build lines), which a logger object of ours would not take.
  const { logger: _logger, ...options } = dataSourceOptions(databaseUrl) as DataSourceOptions & { extra: Record<string, unknown> };
  return { ...options, extra: { ...options.extra, statement_timeout: 0 } } as DataSourceOptions;
}
