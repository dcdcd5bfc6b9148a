import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BadRequestException, type Type } from '@nestjs/common';
import { ROUTE_ARGS_METADATA } from '@nestjs/common/constants.js';
import { RouteParamtypes } from '@nestjs/common/enums/route-paramtypes.enum.js';
import { getMetadataStorage, IsString } from 'class-validator';
import { AdminController } from '../admin/admin.controller';
import { AuditController } from '../audit/audit.controller';
import { AuthController } from '../auth/auth.controller';
import { PasswordController } from '../auth/password.controller';
import { HealthController } from '../health/health.controller';
import { JwksController } from '../keys/jwks.controller';
import { MetricsController } from '../metrics/metrics.controller';
import { SessionsController } from '../sessions/sessions.controller';
import { UsersController } from '../users/users.controller';
import { AppValidationPipe } from './validation';

class RuledBody {
  @IsString() name!: string;
}

/** A host's DTO validated some other way (a zod schema's class, its own pipe): no class-validator rule. */
class PlainBody {
  name!: string;
}

const body = (metatype: new () => object) => ({ type: 'body' as const, metatype, data: undefined });

describe('AppValidationPipe', () => {
  const pipe = new AppValidationPipe();

  it('validates a class with rules strictly, and answers with an instance of it', async () => {
    const value = await pipe.transform({ name: 'a' }, body(RuledBody));
    assert.ok(value instanceof RuledBody);
    assert.deepEqual({ ...value }, { name: 'a' });
    await assert.rejects(pipe.transform({ name: 'a', extra: 1 }, body(RuledBody)), BadRequestException, 'an unknown property');
    await assert.rejects(pipe.transform({ name: 1 }, body(RuledBody)), BadRequestException, 'a broken rule');
    await assert.rejects(pipe.transform('text', body(RuledBody)), BadRequestException, 'not an object');
  });

  it("leaves a class without rules to the host's own validation: the value passes as it came, unchanged", async () => {
    const sent = { name: 1, extra: { nested: true } };
    const value = await pipe.transform(sent, body(PlainBody));
    assert.equal(value, sent);
    assert.deepEqual(sent, { name: 1, extra: { nested: true } });
    // Asked again (the answer is kept per class), the same.
    assert.equal(await pipe.transform('text', body(PlainBody)), 'text');
  });

  it("validates every class Sessionary's own routes take as a body, query or path parameters (each has rules)", () => {
    const controllers: Type[] = [
      AdminController,
      AuditController,
      AuthController,
      PasswordController,
      HealthController,
      JwksController,
      MetricsController,
      SessionsController,
      UsersController,
    ];
    const primitives: unknown[] = [String, Number, Boolean, Object, Array, Buffer, Date];
    const checked: string[] = [];
    const unruled: string[] = [];
    for (const controller of controllers) {
      for (const method of Object.getOwnPropertyNames(controller.prototype)) {
        const args = (Reflect.getMetadata(ROUTE_ARGS_METADATA, controller, method) ?? {}) as Record<string, { index: number; data?: string }>;
        const types = (Reflect.getMetadata('design:paramtypes', controller.prototype, method) ?? []) as unknown[];
        for (const [key, { index, data }] of Object.entries(args)) {
          const paramtype = Number(key.split(':')[0]);
          if (![RouteParamtypes.BODY, RouteParamtypes.QUERY, RouteParamtypes.PARAM].includes(paramtype)) continue;
          const metatype = types[index] as Type | undefined;
          // One named field (`@Param('id') id: string`) is checked by its own pipe; a whole body
          // or query typed as an interface or `object` would not be validated at all.
          if (data !== undefined && (!metatype || primitives.includes(metatype))) continue;
          const name = `${controller.name}.${method} ${metatype?.name ?? 'untyped'}`;
          checked.push(name);
          if (!metatype || !getMetadataStorage().getTargetValidationMetadatas(metatype, '', false, false).length) unruled.push(name);
        }
      }
    }
    assert.ok(checked.length >= 10, `found the routes' DTO classes: ${checked.join(', ')}`);
    assert.deepEqual(unruled, []);
  });
});
