import { CanActivate, ExecutionContext, ForbiddenException, Injectable, Logger, SetMetadata } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { FastifyRequest } from 'fastify';
import { BoundedAuditService } from '../audit/bounded-audit.service';
import type { UserRole } from '../users/user.entity';
import { clientContextOf } from './client-context';
import { AUTH_CONTEXT_KEY, AuthContext } from './current-auth.decorator';

const ROLES_KEY = 'roles';

/** The roles allowed on a controller or route; enforced by RolesGuard after SessionGuard. */
export const Roles = (...roles: UserRole[]) => SetMetadata(ROLES_KEY, roles);

/**
 * Runs after the global SessionGuard, so the caller is known and the role comes from the
 * database on this very request (a demotion takes effect at once). A refusal is audited as
 * ACCESS_DENIED, at most once per session, method and route template per AUDIT_REFUSAL_WINDOW
 * (BoundedAuditService); the answer is the same 403 either way.
 */
@Injectable()
export class RolesGuard implements CanActivate {
  private readonly logger = new Logger(RolesGuard.name);

  constructor(
    private readonly reflector: Reflector,
    private readonly boundedAudit: BoundedAuditService,
  ) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const allowed = this.reflector.getAllAndOverride<UserRole[] | undefined>(ROLES_KEY, [context.getHandler(), context.getClass()]);
    if (!allowed?.length) return true;
    const request = context.switchToHttp().getRequest<FastifyRequest & Record<string, unknown>>();
    const auth = request[AUTH_CONTEXT_KEY] as AuthContext | undefined;
    if (auth && allowed.includes(auth.role)) return true;
    if (auth) await this.recordDenial(request, auth, allowed);
    throw new ForbiddenException('Insufficient role');
  }

  private async recordDenial(request: FastifyRequest, auth: AuthContext, allowed: UserRole[]): Promise<void> {
    // The route template, never the raw URL: bounded keys, and no ids or query strings in the log.
    const route = { template: request.routeOptions?.url ?? 'unmatched', method: request.method };
    try {
      await this.boundedAudit.record(
        {
          type: 'ACCESS_DENIED',
          userId: auth.userId,
          sessionId: auth.sessionId,
          client: clientContextOf(request),
          metadata: { route: route.template, method: route.method, requiredRole: allowed.join(','), role: auth.role },
        },
        { sessionId: auth.sessionId, route },
      );
    } catch (error) {
      // The answer stays the same 403; the failure to audit is the operator's to see.
      this.logger.error('Recording ACCESS_DENIED failed', error instanceof Error ? error.stack : String(error));
    }
  }
}
