/**
 * Sessionary as a library: `import { SessionaryModule } from 'sessionary'` in a Nest 12 app on
 * the Fastify adapter (README, "Using Sessionary inside your Nest app").
 */
export { SessionaryModule, type SessionaryAsyncOptions } from './sessionary/sessionary.module';
export { SESSIONARY_CONFIG, configFromOptions, type SessionaryOptions } from './sessionary/sessionary-config';
export type { SessionaryProcessOptions } from './sessionary/scheduled-jobs';
export { SESSIONARY_DATA_SOURCE, SESSIONARY_DATA_SOURCE_TOKEN } from './database/data-source-name';
export type { AppConfig as SessionaryConfig } from './config/config';

// Guards and decorators: every route is protected by the session guard unless @Public().
export { SessionGuard } from './auth/session.guard';
// A host's own guard reads the caller at request[AUTH_CONTEXT_KEY] (set by SessionGuard) and
// skips routes marked with IS_PUBLIC_KEY; Nest runs a host's global guards before Sessionary's.
export { CurrentAuth, AUTH_CONTEXT_KEY, type ActiveSession, type AuthContext } from './common/current-auth.decorator';
export { Public, IS_PUBLIC_KEY } from './common/public.decorator';
// A host's own health or metrics routes: ACCESS_LOG_PROBES then treats them as it treats ours.
export { ProbeRoute } from './common/probe-route.decorator';
export { Roles, RolesGuard } from './common/roles';
export { RequiresRecentAuth, RecentAuthModule, RecentAuthPolicy } from './common/recent-auth';
export { Client, type ClientContext } from './common/client-context';

// Services a host may call. Registration and login in-process, with the routes' rules and events:
export { AccountsService, type NewAccount, type LoginCredentials, type IssuedTokens } from './auth/accounts.service';
export { SessionsService, type IssuedSession, type OpenedSession, type EndSessionOptions, type SessionTarget } from './sessions/sessions.service';
export { UserSessionsService } from './sessions/user-sessions.service';
export { SessionMaintenanceService } from './sessions/session-maintenance.service';
export { UsersService, type LockedPasswordAccount } from './users/users.service';
export { AuditService, type AuditEventInput, type AuditFilter, type AuditQuery, type AuditPage } from './audit/audit.service';
export { AUDIT_EVENT_TYPES, type AuditEventType, type AuditMetadata } from './audit/audit-event.entity';
export type { SessionEndReason } from './sessions/session.entity';
export { KeyRing } from './keys/key-ring.service';
export { KeyRotationService, type RotationResult, type RotationTrigger } from './keys/key-rotation.service';
export type { KeyListing } from './keys/signing-key.store';

// Domain events, emitted after commit through @nestjs/event-emitter (their names and payloads;
// how the audit writer derives them stays inside).
export {
  DOMAIN_EVENTS,
  type DomainEventName,
  type DomainEventBase,
  type DomainEvent,
  type SessionCreatedEvent,
  type SessionEndedEvent,
  type UserRegisteredEvent,
  type UserPasswordChangedEvent,
  type UserRoleChangedEvent,
  type LoginFailedEvent,
  type AccountLockedEvent,
} from './events/domain-events';
// What the exported services answer.
export type { UserEntity, UserProfile, UserRole } from './users/user.entity';
export type { SessionEntity } from './sessions/session.entity';
export type { AuditEventEntity } from './audit/audit-event.entity';

// The standalone service's HTTP setup (security headers, JSON-only bodies, access log, CORS,
// Swagger UI), for a host that wants the same: configureApp(app, app.get(SESSIONARY_CONFIG)).
export { configureApp, createFastifyAdapter, NEST_APP_OPTIONS } from './app.setup';
