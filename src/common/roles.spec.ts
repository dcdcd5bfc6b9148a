import 'reflect-metadata';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ExecutionContext, ForbiddenException } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { BoundedAuditService } from '../audit/bounded-audit.service';
import { AUTH_CONTEXT_KEY } from './current-auth.decorator';
import { Roles, RolesGuard } from './roles';

class AdminController {
  @Roles('admin')
  manage(): void {}

  open(): void {}
}

describe('RolesGuard', () => {
  const refusals: unknown[] = [];
  const guard = new RolesGuard(new Reflector(), {
    recordAccessDenied: (r: unknown) => Promise.resolve(void refusals.push(r)),
  } as unknown as BoundedAuditService);
  const contextFor = (handler: () => void, request: Record<string, unknown>) =>
    ({
      getHandler: () => handler,
      getClass: () => AdminController,
      switchToHttp: () => ({ getRequest: () => ({ ip: '192.0.2.1', headers: {}, routeOptions: { url: '/admin' }, method: 'GET', ...request }) }),
    }) as unknown as ExecutionContext;
  const session = (role: 'admin' | 'user') => ({ userId: 'u', sessionId: 's', role });

  it('lets the role through, refuses another with 403 (audited), and leaves routes without @Roles alone', async () => {
    assert.equal(await guard.canActivate(contextFor(AdminController.prototype.manage, { [AUTH_CONTEXT_KEY]: session('admin') })), true);
    await assert.rejects(
      guard.canActivate(contextFor(AdminController.prototype.manage, { [AUTH_CONTEXT_KEY]: session('user') })),
      ForbiddenException,
    );
    assert.equal(refusals.length, 1);
    assert.equal(await guard.canActivate(contextFor(AdminController.prototype.open, {})), true);
  });

  it('fails loudly, saying how to use it, when no session is known on a @Roles route (a global guard running before SessionGuard)', async () => {
    // Until 0.22.0: the same 403 as a user's, for admins too, and nothing said why.
    await assert.rejects(
      guard.canActivate(contextFor(AdminController.prototype.manage, {})),
      (error: Error) => !(error instanceof ForbiddenException) && /@UseGuards\(RolesGuard\) on the route or controller/.test(error.message),
    );
  });
});
