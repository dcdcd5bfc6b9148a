import { CanActivate, ExecutionContext, ForbiddenException, Injectable, SetMetadata } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { UserRole } from '../users/user.entity';
import { AUTH_CONTEXT_KEY, AuthContext } from './current-auth.decorator';

const ROLES_KEY = 'roles';

/** The roles allowed on a controller or route; enforced by RolesGuard after SessionGuard. */
export const Roles = (...roles: UserRole[]) => SetMetadata(ROLES_KEY, roles);

/**
 * Runs after the global SessionGuard, so the caller is known and the role comes from the
 * database on this very request (a demotion takes effect at once).
 */
@Injectable()
export class RolesGuard implements CanActivate {
  constructor(private readonly reflector: Reflector) {}

  canActivate(context: ExecutionContext): boolean {
    const allowed = this.reflector.getAllAndOverride<UserRole[] | undefined>(ROLES_KEY, [context.getHandler(), context.getClass()]);
    if (!allowed?.length) return true;
    const auth = context.switchToHttp().getRequest<Record<string, unknown>>()[AUTH_CONTEXT_KEY] as AuthContext | undefined;
    if (!auth || !allowed.includes(auth.role)) throw new ForbiddenException('Insufficient role');
    return true;
  }
}
