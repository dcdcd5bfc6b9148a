import assert from 'node:assert/strict';
import { DataSource, QueryRunner } from 'typeorm';

/** A statement as a service hands it to pg: a text, or a prepared statement's { name, text }. */
export type Statement = string | { name: string; text: string };

/** A statement's text, prepared or not. */
export const textOf = (statement: Statement): string => (typeof statement === 'string' ? statement : statement.text);

/**
 * Until the returned function is called, every query runner the DataSource opens goes through
 * `wrap` before it is used: a spy on the service's real connections, to see (or change) what it
 * sends. The restore checks that the DataSource is itself again.
 */
export function interceptQueryRunners(dataSource: DataSource, wrap: (runner: QueryRunner) => void): () => void {
  const createQueryRunner = dataSource.createQueryRunner.bind(dataSource);
  dataSource.createQueryRunner = (...args) => {
    const runner = createQueryRunner(...args);
    wrap(runner);
    return runner;
  };
  return () => {
    delete (dataSource as { createQueryRunner?: unknown }).createQueryRunner;
    assert.equal(dataSource.createQueryRunner, DataSource.prototype.createQueryRunner);
  };
}

/**
 * Records each statement the runner sends into `sent`; `replace` may send another statement in
 * its place (what is recorded is what the service meant to send).
 */
export function recordStatements(runner: QueryRunner, sent: Statement[], replace?: (statement: Statement) => Statement): void {
  const query = runner.query.bind(runner);
  runner.query = ((statement: Statement, ...rest: unknown[]) => {
    sent.push(statement);
    return (query as (...args: unknown[]) => unknown)(replace ? replace(statement) : statement, ...rest);
  }) as typeof runner.query;
}

/** Records the statements of every query runner the DataSource opens, one list per runner, until the returned restore is called. */
export function recordQueryRunners(dataSource: DataSource, replace?: (statement: Statement, earlier: Statement[]) => Statement) {
  const runners: Statement[][] = [];
  const restore = interceptQueryRunners(dataSource, (runner) => {
    const sent: Statement[] = [];
    runners.push(sent);
    recordStatements(runner, sent, replace && ((statement) => replace(statement, sent.slice(0, -1))));
  });
  return { runners, restore };
}
