/**
 * The signals that shut the service down gracefully, on which the embedded PostgreSQL is
 * stopped too: what orchestrators send (SIGTERM), Ctrl-C (SIGINT), a closed terminal (SIGHUP),
 * Ctrl-\ (SIGQUIT) and nodemon's restart (SIGUSR2). Nest's enableShutdownHooks() without a list
 * took those and the fault signals (SIGSEGV, SIGABRT, …), while the embedded server's handler
 * took only the first three: on SIGQUIT or SIGUSR2 the app closed and PostgreSQL was left running.
 */
export const SHUTDOWN_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR2'];
