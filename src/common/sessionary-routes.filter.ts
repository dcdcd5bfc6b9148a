import { Catch, Injectable } from '@nestjs/common';
import { RefusedRequestsTally } from '../audit/refused-requests-tally';
import { DatabaseOutageMonitor } from '../database/database-outage.monitor';
import { AllExceptionsFilter } from './all-exceptions.filter';

/**
 * AllExceptionsFilter on Sessionary's own controllers (`@UseFilters`), so that its routes
 * answer as API.md says (503 with Retry-After, the step-up challenge, the refusals counted)
 * whatever global filters a host adds: Nest asks a controller's filters before any global one,
 * and a host's `app.useGlobalFilters()` catch-all was asked before Sessionary's global filter,
 * on Sessionary's routes too (until 0.22.0). Its dependencies are required here, so that a
 * module where they do not resolve fails at boot instead of leaving them out.
 */
@Catch()
@Injectable()
export class SessionaryRoutesFilter extends AllExceptionsFilter {
  constructor(outage: DatabaseOutageMonitor, refusals: RefusedRequestsTally) {
    super(outage, refusals);
  }
}
