import { CanActivate, ExecutionContext, ForbiddenException, Injectable, SetMetadata } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { FastifyRequest } from 'fastify';
import { BoundedAuditService } from '../audit/bounded-audit.service';
import type { UserRole } from '../users/user.entity';
import { clientContextOf, routeOf } from './client-context';
import { AUTH_CONTEXT_KEY, AuthContext } from './current-auth.decorator';

const ROLES_KEY = 'roles';

/** The roles allowed on a controller or route; enforced by RolesGuard after SessionGuard. */
export const Roles = (...roles: UserRole[]) => SetMetadata(ROLES_KEY, roles);

/**
 * Runs after the global SessionGuard, so the caller is known, with the role the session check
 * answered: from the per-instance session cache, which a trigger's NOTIFY updates on every role
 * change (a demotion takes effect within the notification's delivery), or from the database
 * when the cache cannot vouch for it (see SessionsService.validateSession). A refusal is audited as
 * ACCESS_DENIED, at most once per session, method and route template per AUDIT_REFUSAL_WINDOW
 * (BoundedAuditService); the answer is the same 403 either way.
 */
@Injectable()
export class RolesGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    private readonly boundedAudit: BoundedAuditService,
  ) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const allowed = this.reflector.getAllAndOverride<UserRole[] | undefined>(ROLES_KEY, [context.getHandler(), context.getClass()]);
    if (!allowed?.length) return true;
    const request = context.switchToHttp().getRequest<FastifyRequest & Record<string, unknown>>();
    const auth = request[AUTH_CONTEXT_KEY] as AuthContext | undefined;
    // No caller known on a @Roles route: the guard ran before SessionGuard (registered as a
    // host's global guard, which Nest runs before Sessionary's) or on a @Public() route. A
    // mistake in the application, refused loudly (a 500 and this message in the log) rather
    // than with the 403 every admin would get.
    if (!auth) {
      throw new Error(
        'RolesGuard found no session on a @Roles() route: use it with @UseGuards(RolesGuard) on the route or controller (after the global SessionGuard), not as a global guard, and not on @Public() routes',
      );
    }
    if (allowed.includes(auth.role)) return true;
    await this.boundedAudit.recordAccessDenied({
      userId: auth.userId,
      sessionId: auth.sessionId,
      client: clientContextOf(request),
      route: routeOf(request),
      details: { requiredRole: allowed.join(','), role: auth.role },
    });
    throw new ForbiddenException('Insufficient role');
  }
}
