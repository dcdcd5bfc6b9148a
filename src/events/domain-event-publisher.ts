import { Injectable, Logger, OnModuleInit } from '@nestjs/common';
import { EventEmitter2 } from '@nestjs/event-emitter';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import type {
  DataSource,
  EntityManager,
  EntitySubscriberInterface,
  QueryRunner,
  TransactionCommitEvent,
  TransactionRollbackEvent,
  TransactionStartEvent,
} from 'typeorm';
import type { DomainEvent } from './domain-events';

/** SQLSTATE 25P02, in_failed_sql_transaction: a statement after a failed one in the same transaction. */
const PG_TRANSACTION_ABORTED = '25P02';

/**
 * Emits domain events once the transaction that made them true has committed: events
 * published inside a transaction wait on its query runner and go out from TypeORM's
 * after-commit hook, or are dropped with a rollback (a nested transaction's, rolled back to its
 * savepoint, drops the events published inside it); events published outside one go out at once.
 * A listener's failure is the listener's (logged here), never the committed change's: a
 * listener's rejected promise is caught too (an `@OnEvent` with `suppressErrors: false`).
 */
@Injectable()
export class DomainEventPublisher implements OnModuleInit, EntitySubscriberInterface {
  private readonly logger = new Logger(DomainEventPublisher.name);
  /** Each runner's events waiting for the commit, with the nesting depth each was published at. */
  private readonly pending = new WeakMap<QueryRunner, Array<{ depth: number; events: DomainEvent[] }>>();
  /** Each runner's transaction nesting (1: a transaction, 2: a savepoint in it, ...), kept from TypeORM's hooks. */
  private readonly depths = new WeakMap<QueryRunner, number>();

  constructor(
    private readonly emitter: EventEmitter2,
    @InjectDataSource(SESSIONARY_DATA_SOURCE) private readonly dataSource: DataSource,
  ) {}

  onModuleInit(): void {
    // A subscriber without listenTo() hears every transaction of the data source.
    this.dataSource.subscribers.push(this);
  }

  publish(em: EntityManager, events: DomainEvent[]): void {
    if (!events.length) return;
    const runner = em.queryRunner;
    if (!runner?.isTransactionActive) {
      this.emit(events);
      return;
    }
    const entry = { depth: this.depths.get(runner) ?? 1, events };
    const queued = this.pending.get(runner);
    if (queued) queued.push(entry);
    else this.pending.set(runner, [entry]);
  }

  afterTransactionStart(event: TransactionStartEvent): void {
    this.depths.set(event.queryRunner, (this.depths.get(event.queryRunner) ?? 0) + 1);
  }

  /**
   * A transaction in which a statement failed (and whose error the caller caught) cannot
   * commit: PostgreSQL answers its COMMIT with ROLLBACK, no error, and TypeORM, which does not
   * read the answer's tag, calls the after-commit hook all the same. Its events are dropped
   * here: until 0.24.2 a host's transaction that swallowed a failed insert after ending
   * sessions emitted session.ended for sessions still active. Asked of the server with one
   * statement on the transaction's own connection, only when events wait (a login's, an end's,
   * never a refresh's or a request's check): the connection's transaction status alone can lag,
   * since node-postgres hands a failed statement's error over before the server says the
   * transaction is aborted. Straight on the driver's client, so TypeORM logs no failed query.
   */
  async beforeTransactionCommit(event: TransactionCommitEvent): Promise<void> {
    const runner = event.queryRunner;
    if (this.depths.get(runner) !== 1 || !this.pending.has(runner)) return;
    const client = (runner as QueryRunner & { databaseConnection?: { query?: (text: string) => Promise<unknown> } }).databaseConnection;
    if (typeof client?.query !== 'function') return;
    const aborted = await client.query('SELECT 1').then(
      () => false,
      // The driver's own error (not TypeORM's QueryFailedError), its SQLSTATE in `code`.
      (error: unknown) => (error as { code?: unknown } | null)?.code === PG_TRANSACTION_ABORTED,
    );
    if (!aborted) return;
    const dropped = this.pending.get(runner)!.reduce((n, entry) => n + entry.events.length, 0);
    this.pending.delete(runner);
    this.logger.warn(`${dropped} domain event(s) not emitted: their transaction failed, and its COMMIT rolls it back`);
  }

  afterTransactionCommit(event: TransactionCommitEvent): void {
    const depth = this.leave(event.queryRunner);
    const queued = this.pending.get(event.queryRunner);
    if (!queued) return;
    if (event.queryRunner.isTransactionActive) {
      // A released savepoint is not the end: its events are now the enclosing level's, which may still roll back.
      for (const entry of queued) entry.depth = Math.min(entry.depth, depth);
      return;
    }
    this.pending.delete(event.queryRunner);
    this.emit(queued.flatMap((entry) => entry.events));
  }

  afterTransactionRollback(event: TransactionRollbackEvent): void {
    const depth = this.leave(event.queryRunner);
    const queued = this.pending.get(event.queryRunner);
    if (!queued) return;
    if (!event.queryRunner.isTransactionActive) this.pending.delete(event.queryRunner);
    // Rolled back to a savepoint: what was published inside it did not happen.
    else
      this.pending.set(
        event.queryRunner,
        queued.filter((entry) => entry.depth <= depth),
      );
  }

  /** The nesting left after a commit or rollback. */
  private leave(runner: QueryRunner): number {
    const depth = Math.max(0, (this.depths.get(runner) ?? 1) - 1);
    if (depth) this.depths.set(runner, depth);
    else this.depths.delete(runner);
    return depth;
  }

  private emit(events: DomainEvent[]): void {
    for (const event of events) {
      const failed = (error: unknown) =>
        this.logger.error(`A listener of ${event.name} failed`, error instanceof Error ? error.stack : String(error));
      try {
        // emitAsync: a listener's rejection is caught here rather than left unhandled (which ends the process).
        this.emitter.emitAsync(event.name, event).catch(failed);
      } catch (error) {
        failed(error);
      }
    }
  }
}
