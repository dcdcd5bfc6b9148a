import { Injectable, Logger, OnModuleInit } from '@nestjs/common';
import { EventEmitter2 } from '@nestjs/event-emitter';
import { InjectDataSource } from '@nestjs/typeorm';
import { SESSIONARY_DATA_SOURCE } from '../database/data-source-name';
import type { DataSource, EntityManager, EntitySubscriberInterface, QueryRunner, TransactionCommitEvent, TransactionRollbackEvent } from 'typeorm';
import type { DomainEvent } from './domain-events';

/**
 * Emits domain events once the transaction that made them true has committed: events
 * published inside a transaction wait on its query runner and go out from TypeORM's
 * after-commit hook, or are dropped with a rollback; events published outside one go out at once.
 * A listener's failure is the listener's (logged here), never the committed change's.
 */
@Injectable()
export class DomainEventPublisher implements OnModuleInit, EntitySubscriberInterface {
  private readonly logger = new Logger(DomainEventPublisher.name);
  private readonly pending = new WeakMap<QueryRunner, DomainEvent[]>();

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
    const queued = this.pending.get(runner);
    if (queued) queued.push(...events);
    else this.pending.set(runner, [...events]);
  }

  afterTransactionCommit(event: TransactionCommitEvent): void {
    // A released savepoint is not the end: the outer transaction may still roll back.
    if (event.queryRunner.isTransactionActive) return;
    const events = this.pending.get(event.queryRunner);
    if (!events) return;
    this.pending.delete(event.queryRunner);
    this.emit(events);
  }

  afterTransactionRollback(event: TransactionRollbackEvent): void {
    if (!event.queryRunner.isTransactionActive) this.pending.delete(event.queryRunner);
  }

  private emit(events: DomainEvent[]): void {
    for (const event of events) {
      try {
        this.emitter.emit(event.name, event);
      } catch (error) {
        this.logger.error(`A listener of ${event.name} failed`, error instanceof Error ? error.stack : String(error));
      }
    }
  }
}
