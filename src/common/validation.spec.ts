import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BadRequestException, type Type } from '@nestjs/common';
import { PATH_METADATA, ROUTE_ARGS_METADATA } from '@nestjs/common/constants.js';
import { RouteParamtypes } from '@nestjs/common/enums/route-paramtypes.enum.js';
import { getMetadataStorage, IsString } from 'class-validator';
import { AppValidationPipe, isNewEmailAddress } from './validation';

class RuledBody {
  @IsString() name!: string;
}

/** A host's DTO validated some other way (a zod schema's class, its own pipe): no class-validator rule. */
class PlainBody {
  name!: string;
}

/** Every controller class under src/ (each `*.controller.js` beside this file's folder), found rather than listed: a new one is checked too. */
function sessionaryControllers(): Type[] {
  const files = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
      entry.isDirectory() ? files(join(dir, entry.name)) : entry.name.endsWith('.controller.js') ? [join(dir, entry.name)] : [],
    );
  return files(join(__dirname, '..')).flatMap((file) =>
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded by path, as found
    Object.values(require(file) as Record<string, unknown>).filter(
      (value): value is Type => typeof value === 'function' && Reflect.getMetadata(PATH_METADATA, value) !== undefined,
    ),
  );
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
    const controllers = sessionaryControllers();
    assert.ok(controllers.length >= 9, `found the controllers: ${controllers.map((c) => c.name).join(', ')}`);
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

describe('isNewEmailAddress', () => {
  it('refuses each spelling that IDNA or NFKC maps onto another address, on its own', () => {
    for (const email of [
      '\uff41da@example.test', // full-width a
      'ada@\u212fxample.test', // script small e
      'ada\ufb01@example.test', // fi ligature
      'ada@mail.example\u3002test', // ideographic full stop: a dot to IDNA, a letter to NFKC
      'ada@xn--bcher-kva.test', // the A-label of bücher
      'ada@mail.XN--BCHER-KVA.test',
      'ada@gma\u0130l.test', // İ: i and a combining dot to IDNA, a plain i to PostgreSQL's lower()
      '\u0130da@example.test',
    ]) {
      assert.equal(isNewEmailAddress(email), false, JSON.stringify(email));
    }
  });

  it('accepts plain and internationalised addresses as they are shown, in any letter case', () => {
    for (const email of [
      'ada@example.test',
      'Ada@Example.TEST',
      'ada@bücher.test',
      'ada@BÜCHER.test',
      'ada@faß.test',
      'jürgen@münchen.test',
      'a_b@a-b.example.test',
    ]) {
      assert.equal(isNewEmailAddress(email), true, email);
    }
  });
});
