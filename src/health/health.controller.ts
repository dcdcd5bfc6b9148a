import { Controller, Get, Logger, OnModuleDestroy, ServiceUnavailableException, UseFilters } from '@nestjs/common';
import { SessionaryRoutesFilter } from '../common/sessionary-routes.filter';
import { ApiOkResponse, ApiOperation, ApiServiceUnavailableResponse, ApiTags } from '@nestjs/swagger';
import { HealthCheck, HealthCheckResult, HealthCheckService, TypeOrmHealthIndicator } from '@nestjs/terminus';
import { SkipThrottle } from '@nestjs/throttler';
import { InjectDataSource } from '@nestjs/typeorm';
import type { DataSource } from 'typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import { DatabaseNotReadyException, InstanceShuttingDownException, SigningKeysStaleException } from '../common/database-not-ready.exception';
import { ProbeRoute } from '../common/probe-route.decorator';
import { Public } from '../common/public.decorator';
import { KeyRing } from '../keys/key-ring.service';

@ApiTags('operations')
@Public()
// Probes are not a client's requests: they must not use up its limit or be refused, and
// liveness must answer without the database (API.md).
@SkipThrottle()
// Its routes answer as API.md says whatever global filters a host adds (SessionaryRoutesFilter).
@UseFilters(SessionaryRoutesFilter)
@Controller('health')
export class HealthController implements OnModuleDestroy {
  /** Set at the first step of a shutdown: readiness says "send no more" from then on. */
  private shuttingDown = false;
  /** The database's check under way, which every probe that comes meanwhile shares. */
  private databaseCheck: Promise<HealthCheckResult> | undefined;
  private readonly logger = new Logger('Health');

  constructor(
    private readonly health: HealthCheckService,
    private readonly db: TypeOrmHealthIndicator,
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly keys: KeyRing,
  ) {}

  @Get('live')
  @ProbeRoute()
  @ApiOperation({ operationId: 'getLiveness', summary: 'The process runs (never touches the database)' })
  @ApiOkResponse({
    description: 'The process answers',
    schema: { type: 'object', properties: { status: { type: 'string', enum: ['ok'] } }, required: ['status'], additionalProperties: false },
  })
  live(): { status: 'ok' } {
    return { status: 'ok' };
  }

  /**
   * Nest's first shutdown step (SIGTERM): the jobs are stopped and the last counts written
   * before the HTTP server closes, seconds in which this instance still answers; a load
   * balancer that polls readiness stops sending it requests meanwhile instead of at the close.
   */
  onModuleDestroy(): void {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    // Once: each probe of the drain is then answered 503 without a line of its own.
    this.logger.log('Shutting down: /health/ready answers 503 from now on');
  }

  @Get('ready')
  @ProbeRoute()
  @HealthCheck()
  @ApiOperation({ operationId: 'getReadiness', summary: 'The database answers' })
  @ApiServiceUnavailableResponse({
    description:
      'The database does not answer or takes no writes, the signing keys have not been read for 3 minutes, or the instance is shutting down',
  })
  async ready(): Promise<HealthCheckResult> {
    if (this.shuttingDown) throw new InstanceShuttingDownException('The instance is shutting down');
    const result = await this.checkDatabaseOnce();
    // The database answers, yet this instance's signing keys may be old (0.24.0).
    const stale = this.keys.staleness();
    if (stale) throw new SigningKeysStaleException(`Not ready (${stale})`);
    return result;
  }

  /**
   * The database's check, shared by every probe that comes while one runs. The route is public
   * and exempt from the request limit (probes are no client's requests), and each check takes a
   * pool connection for two round trips: until 0.24.1 a burst of probes took the pool's
   * connections from logins and refreshes, and once the pool was full the ping's own timeout
   * made every instance answer 503 and report an outage while the database was up. Nothing is
   * reused once a check is done: the next probe sees the database as it is then.
   */
  private checkDatabaseOnce(): Promise<HealthCheckResult> {
    this.databaseCheck ??= this.checkDatabase().finally(() => (this.databaseCheck = undefined));
    return this.databaseCheck;
  }

  private async checkDatabase(): Promise<HealthCheckResult> {
    let result: HealthCheckResult;
    try {
      // Sessionary's own data source: without it, the indicator pings the default one (a host's).
      result = await this.health.check([() => this.db.pingCheck('database', { connection: this.dataSource, timeout: 2000 })]);
    } catch (error) {
      // Told apart from any other 503, so that the exception filter reports this one as an outage.
      if (error instanceof ServiceUnavailableException) throw new DatabaseNotReadyException(whyNotReady(error.getResponse()));
      throw error;
    }
    // A server that answers but takes no write (a standby this pool reached, a database set
    // read-only) serves no login, refresh or logout: not ready (0.21.0; it said 200).
    let readOnly: boolean;
    try {
      readOnly = await this.databaseIsReadOnly();
    } catch (error) {
      throw new DatabaseNotReadyException(`Not ready (database: ${error instanceof Error ? error.message : 'down'})`);
    }
    if (readOnly) throw new DatabaseNotReadyException('Not ready (database: read-only, a standby or default_transaction_read_only)');
    return result;
  }

  /** Whether the server refuses writes on a connection of the pool, as a request's would be. */
  private async databaseIsReadOnly(): Promise<boolean> {
    const [row] = (await this.dataSource.query(
      `SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean AS read_only`,
    )) as Array<{
      read_only: boolean;
    }>;
    return row.read_only;
  }
}

/**
 * What the failed check says, for the log line (the client's body never carries it): terminus's
 * result names each indicator that is down with its error's message, which the exception's own
 * message must carry, or the log said only "Database Not Ready Exception".
 */
function whyNotReady(response: unknown): string {
  const down = (response as { error?: Record<string, { message?: unknown } | undefined> } | null)?.error ?? {};
  const reasons = Object.entries(down).map(([name, d]) => `${name}: ${typeof d?.message === 'string' ? d.message : 'down'}`);
  return `Not ready${reasons.length ? ` (${reasons.join('; ')})` : ''}`;
}
