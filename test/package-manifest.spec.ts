/**
 * Sessionary is also a library a Nest app installs. The packages whose classes, decorators and
 * module instances a host shares with it (Nest's core, the adapter, the scheduler, the event
 * emitter, TypeORM and the validators) must be one copy for both: DI resolves by class, and two
 * copies of @nestjs/core or @nestjs/schedule would leave a SchedulerRegistry or a data source
 * unresolved, or silently undefined where it is @Optional(). So they are peerDependencies, which
 * npm installs for the service itself as well (`npm ci`, and `npm prune --omit=dev` in the
 * Dockerfile keeps them, since the lock file does not mark them dev).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import pg from 'pg';
import { dataSourceOptions } from '../src/database/data-source.options';

const ROOT = join(__dirname, '..', '..');

interface Manifest {
  dependencies: Record<string, string>;
  peerDependencies?: Record<string, string>;
  devDependencies: Record<string, string>;
}

const readJson = <T>(file: string): T => JSON.parse(readFileSync(join(ROOT, file), 'utf8')) as T;

/** The packages the example host (examples/host-app/src) imports beside Sessionary itself. */
function packagesTheExampleHostImports(): string[] {
  const dir = join(ROOT, 'examples', 'host-app', 'src');
  const names = new Set<string>();
  for (const file of readdirSync(dir)) {
    for (const [, specifier] of readFileSync(join(dir, file), 'utf8').matchAll(/from '([^'.][^']*)'/g)) {
      const name = specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0];
      if (name !== 'sessionary') names.add(name);
    }
  }
  return [...names].sort();
}

describe('package manifest (Sessionary as a library)', () => {
  const manifest = readJson<Manifest>('package.json');
  const peers = manifest.peerDependencies ?? {};

  it('declares what a host shares with it as peer dependencies, in no other list', () => {
    const shared = [
      '@nestjs/common',
      '@nestjs/core',
      '@nestjs/event-emitter',
      '@nestjs/platform-fastify',
      '@nestjs/schedule',
      '@nestjs/typeorm',
      'class-transformer',
      'class-validator',
      'reflect-metadata',
      'rxjs',
      'typeorm',
    ];
    assert.deepEqual(Object.keys(peers).sort(), shared);
    for (const name of shared) {
      assert.equal(manifest.dependencies[name], undefined, `${name} is a dependency as well as a peer`);
      assert.equal(manifest.devDependencies[name], undefined, `${name} is a dev dependency as well as a peer (npm prune --omit=dev would drop it)`);
    }
  });

  it('has every package the example host imports beside it as a peer', () => {
    const imported = packagesTheExampleHostImports();
    assert.ok(imported.includes('@nestjs/core'), `read the example host's imports: ${imported.join(', ')}`);
    assert.deepEqual(
      imported.filter((name) => !(name in peers)),
      [],
    );
  });

  it('installs the peers for the service itself, and not as dev dependencies', () => {
    const lock = readJson<{ packages: Record<string, { version?: string; dev?: boolean; peerDependencies?: Record<string, string> }> }>(
      'package-lock.json',
    );
    // The lock file is the manifest's (npm ci refuses one that is not, but a test run need not start with npm ci).
    assert.deepEqual(lock.packages[''].peerDependencies, peers);
    for (const name of Object.keys(peers)) {
      const installed = lock.packages[`node_modules/${name}`];
      assert.ok(installed?.version, `${name} is not in the lock file`);
      assert.notEqual(installed.dev, true, `${name} is marked dev in the lock file`);
    }
  });

  it("runs TypeORM on this package's pg, not on whichever pg TypeORM's folder resolves", () => {
    assert.equal((dataSourceOptions('postgres://localhost/x') as { driver?: unknown }).driver, pg);
  });
});
