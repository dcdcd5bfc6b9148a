import { Logger } from '@nestjs/common';
import { AbstractLogger, type LogLevel, type LogMessage } from 'typeorm';

/**
 * TypeORM's own lines (its warnings, the migrations it runs) through Nest's logger, so that they
 * take LOG_FORMAT (one JSON object a line by default), LOG_LEVEL and the log's masking like every
 * other line. TypeORM's default console logger wrote them with console.log in colour, outside
 * all three. Only the kinds given are written: never statements or their parameters (which hold
 * password and token hashes).
 */
export class TypeOrmNestLogger extends AbstractLogger {
  private readonly logger = new Logger('TypeORM');

  protected writeLog(level: LogLevel, logMessage: LogMessage | string | number | Array<LogMessage | string | number>): void {
    const messages = this.prepareLogMessages(logMessage, { highlightSql: false, appendParameterAsComment: false, addColonToPrefix: true });
    for (const message of messages) {
      const text = message.prefix ? `${message.prefix} ${message.message}` : String(message.message);
      const kind = message.type ?? level;
      // TypeORM 1.x writes a migration line only when a migration failed (success is a schema-build line).
      if (kind === 'error' || kind === 'query-error' || kind === 'migration') this.logger.error(text);
      else if (kind === 'warn' || kind === 'query-slow') this.logger.warn(text);
      else this.logger.log(text);
    }
  }
}
