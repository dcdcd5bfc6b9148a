import { applyDecorators, UseFilters, UseGuards } from '@nestjs/common';
import { JsonBodiesOnlyGuard } from './json-bodies-only.guard';
import { SessionaryRoutesFilter } from './sessionary-routes.filter';

/**
 * On each of Sessionary's controllers: its routes answer as API.md says whatever the host app
 * adds or leaves out (SessionaryRoutesFilter: whatever global filters; JsonBodiesOnlyGuard:
 * whatever body parsers).
 */
export const SessionaryRoutes = (): ClassDecorator => applyDecorators(UseFilters(SessionaryRoutesFilter), UseGuards(JsonBodiesOnlyGuard));
