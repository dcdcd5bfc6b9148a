import { Injectable, OnApplicationShutdown } from '@nestjs/common';
import { flushLogs } from './json-logger';

/**
 * After a signal Nest closes the app and then re-raises the signal, which ends the process
 * without an 'exit' event: lines still in the asynchronous log buffer are written here first,
 * and every line after (the other modules' shutdown hooks, which Nest runs after the root
 * module's) as it is logged (flushLogs).
 */
@Injectable()
export class LogFlushOnShutdown implements OnApplicationShutdown {
  onApplicationShutdown(): void {
    flushLogs();
  }
}
