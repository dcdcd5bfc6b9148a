import { ServiceUnavailableException } from '@nestjs/common';

/**
 * The readiness check's 503: the database does not answer its ping. The one 503 the exception
 * filter reports to the outage monitor; another raised on purpose (an export waiting for the log
 * to settle, a host application's route) answers the same body but is no database outage.
 */
export class DatabaseNotReadyException extends ServiceUnavailableException {}

/**
 * The readiness check's 503 once the instance is shutting down: expected, for every probe of the
 * drain, so it is answered without a log line each (the shutdown's start is logged once, by the
 * health controller), and it is no database outage.
 */
export class InstanceShuttingDownException extends ServiceUnavailableException {}

/**
 * The readiness check's 503 for a signing-key ring not read for a while (KeyRing.staleness):
 * KeyRing warns of each failed read, so no line per probe; and no database outage.
 */
export class SigningKeysStaleException extends ServiceUnavailableException {}
