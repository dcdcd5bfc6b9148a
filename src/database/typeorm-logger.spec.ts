import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Logger, type LoggerService } from '@nestjs/common';
import { cliDataSourceOptions, dataSourceOptions } from './data-source.options';
import { TypeOrmNestLogger } from './typeorm-logger';

describe('TypeOrmNestLogger', () => {
  const lines: Array<[level: string, message: string, context: unknown]> = [];
  const capture =
    (level: string) =>
    (message: unknown, ...rest: unknown[]) =>
      lines.push([level, String(message), rest.at(-1)]);
  const capturing: LoggerService = { log: capture('log'), warn: capture('warn'), error: capture('error') };
  before(() => Logger.overrideLogger(capturing));
  after(() => Logger.overrideLogger(false));

  it("writes TypeORM's warnings and migration lines through Nest's logger (so LOG_FORMAT and the masking apply), never a statement's parameters", () => {
    lines.length = 0;
    const logger = new TypeOrmNestLogger(['warn', 'migration']);
    logger.logMigration('Migration "AuditShipProgress1766900000000" failed, error: relation "x" already exists');
    logger.logSchemaBuild('Migration AuditShipProgress1766900000000 has been executed successfully.');
    logger.log('warn', 'Could not retrieve available extensions.');
    logger.logQuery('SELECT password_hash FROM users WHERE id = $1', ['secret-parameter']);
    logger.logQueryError('boom', 'UPDATE users SET password_hash = $1', ['$2b$12$hash']);
    logger.logQuerySlow(5000, 'SELECT 1 FROM users WHERE password_hash = $1', ['$2b$12$slowhash']);
    logger.log('log', 'a plain log line');
    assert.deepEqual(lines, [
      ['error', 'Migration "AuditShipProgress1766900000000" failed, error: relation "x" already exists', 'TypeORM'],
      ['warn', 'Could not retrieve available extensions.', 'TypeORM'],
      // A warning to TypeORM (when maxQueryExecutionTime is set): the statement, not its parameters.
      ['warn', 'query is slow: SELECT 1 FROM users WHERE password_hash = $1', 'TypeORM'],
      ['warn', 'execution time: 5000', 'TypeORM'],
    ]);
    for (const parameter of ['secret-parameter', '$2b$']) assert.ok(!JSON.stringify(lines).includes(parameter), parameter);
  });

  it("is the service's data source's logger, with the same kinds as its `logging`; not the TypeORM CLI's (whose commands print through its own)", () => {
    const options = dataSourceOptions('postgres://nowhere/none');
    assert.ok(options.logger instanceof TypeOrmNestLogger);
    assert.deepEqual(options.logging, ['warn', 'migration']);
    assert.equal(cliDataSourceOptions('postgres://nowhere/none').logger, undefined);
  });
});
