import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { instanceToPlain } from 'class-transformer';
import { UserEntity } from './user.entity';

describe('UserEntity serialised', () => {
  const user = Object.assign(new UserEntity(), {
    id: '00000000-0000-4000-8000-000000000001',
    username: 'ada_l',
    email: 'ada@example.com',
    passwordHash: '$2b$12$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234',
    role: 'user' as const,
    createdAt: new Date('2026-12-01T00:00:00Z'),
    updatedAt: new Date('2026-12-01T00:00:00Z'),
  });

  it('leaves the password hash out of JSON, and keeps every other column', () => {
    const json = JSON.parse(JSON.stringify(user)) as Record<string, unknown>;
    assert.deepEqual(Object.keys(json).sort(), ['createdAt', 'email', 'id', 'role', 'updatedAt', 'username']);
    assert.equal(user.passwordHash.startsWith('$2b$'), true, 'the entity itself still holds it');
  });

  it("leaves it out of class-transformer's plain object (Nest's ClassSerializerInterceptor)", () => {
    assert.deepEqual(Object.keys(instanceToPlain(user)).sort(), ['createdAt', 'email', 'id', 'role', 'updatedAt', 'username']);
  });
});
