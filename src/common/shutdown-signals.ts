/**
 * The signals that shut the service down gracefully: what orchestrators send (SIGTERM), Ctrl-C
 * (SIGINT) and a closed terminal (SIGHUP). Nest's enableShutdownHooks() without a list also
 * takes SIGQUIT, SIGUSR2 and the fault signals, which the embedded PostgreSQL's own handler
 * does not: the process then ended with the server still running.
 */
export const SHUTDOWN_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];
