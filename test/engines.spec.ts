/**
 * `npm ci` must install without EBADENGINE warnings on every Node line package.json promises
 * (issue 9). npm warns when the running Node is outside an installed package's `engines.node`,
 * so this checks the lowest version of each promised line against every package in the lock
 * file: the overrides in package.json that pin Node-20-compatible releases of Nest's and
 * Fastify's dependencies cannot be dropped by an upgrade without this failing.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import semver from 'semver';

const ROOT = join(__dirname, '..', '..');

interface LockPackage {
  version?: string;
  engines?: { node?: string } | string[];
}

function readJson<T>(file: string): T {
  return JSON.parse(readFileSync(join(ROOT, file), 'utf8')) as T;
}

/** The first release of each Node line in our own `engines.node` (e.g. 20.19.0, 22.12.0, 24.0.0). */
function promisedLineFloors(range: string): string[] {
  return new semver.Range(range).set.map((comparators) => {
    const floor = semver.minVersion(comparators.map((c) => c.value).join(' '));
    assert.ok(floor, `no lowest version in ${range}`);
    return floor.version;
  });
}

describe('engines', () => {
  const own = readJson<{ engines: { node: string } }>('package.json').engines.node;
  const floors = promisedLineFloors(own);
  const packages = Object.entries(readJson<{ packages: Record<string, LockPackage> }>('package-lock.json').packages);

  it('promises Node 20, 22 and 24', () => {
    assert.deepEqual(
      floors.map((v) => semver.major(v)),
      [20, 22, 24],
    );
  });

  it('installs only packages whose engines accept the lowest promised release of every Node line', () => {
    const refused: string[] = [];
    for (const [path, pkg] of packages) {
      const wanted = Array.isArray(pkg.engines) ? undefined : pkg.engines?.node;
      if (!path || !wanted) continue;
      for (const node of floors) {
        if (!semver.satisfies(node, wanted)) refused.push(`${path}@${pkg.version} needs node ${wanted}, not ${node}`);
      }
    }
    assert.ok(packages.length > 100, 'the lock file lists the installed packages');
    assert.deepEqual(refused, []);
  });
});
