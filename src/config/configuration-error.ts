/**
 * A configuration the service refuses to start with. Its message says what to fix (never a
 * value): it is printed alone, without a stack, which would only point into the config module.
 * A module of its own, importing nothing: the CLI loads it before any package.
 */
export class ConfigurationError extends Error {
  override name = 'ConfigurationError';
}
