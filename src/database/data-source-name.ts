import { getDataSourceToken } from '@nestjs/typeorm';

/**
 * Sessionary's TypeORM data source is a named one, so that a host application's own default
 * data source stays the host's. Both were the default until 0.16.0, and Nest resolved the one
 * token to one of them for everyone: the host's providers queried Sessionary's database, or
 * Sessionary's the host's (it then failed at boot: no `signing_keys`).
 * Inject it with `@InjectDataSource(SESSIONARY_DATA_SOURCE)`.
 */
export const SESSIONARY_DATA_SOURCE = 'sessionary';

/** Its injection token (`app.get(SESSIONARY_DATA_SOURCE_TOKEN)`). */
export const SESSIONARY_DATA_SOURCE_TOKEN = getDataSourceToken(SESSIONARY_DATA_SOURCE) as string;
