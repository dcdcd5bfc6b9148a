/**
 * The file system PostgreSQL's data directory is on, for the audit bench's header. Removing
 * files costs what the file system makes it cost: on ext4 mounted with online `discard`,
 * truncating a file frees and trims its blocks at once, 0.35–0.68 s per GiB on the box of
 * docs/benchmarks.md (0.14.2), so a month's DROP TABLE (3 GiB) took 1.0–2.0 s there, and
 * 32–75 ms with the same disk remounted without it. A drop's figure is read with this line.
 */
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import type { Client } from 'pg';

export interface MountEntry {
  mountPoint: string;
  type: string;
  options: string[];
}

/** /proc/mounts escapes space, tab, newline and backslash in paths as octal (\040 …). */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** The mount holding `path` (already resolved): the last-mounted of the longest mount points that contain it. */
export function mountOf(path: string, procMounts: string): MountEntry | undefined {
  let found: MountEntry | undefined;
  for (const line of procMounts.split('\n')) {
    const [, mountPoint, type, options] = line.split(' ');
    if (!options) continue;
    const entry = { mountPoint: unescapeMountField(mountPoint), type, options: options.split(',') };
    const contains = entry.mountPoint === '/' || path === entry.mountPoint || path.startsWith(`${entry.mountPoint}/`);
    // Later lines mount over earlier ones at the same point, so ties go to the later line.
    if (contains && (!found || entry.mountPoint.length >= found.mountPoint.length)) found = entry;
  }
  return found;
}

/** One line: the data directory's file system and mount options, or why they are not known. */
export function describeMount(mount: MountEntry | undefined): string {
  if (!mount) return 'unknown (no mount holds it)';
  const discard = mount.options.includes('discard')
    ? '; online discard: the blocks of removed files are trimmed as they go, which a drop waits for'
    : '';
  return `${mount.type} on ${mount.mountPoint} (${mount.options.join(',')})${discard}`;
}

/**
 * Reads the data directory from the server (a superuser's or pg_read_all_settings' setting)
 * and its mount from this machine's /proc/mounts: known only when the server runs here.
 */
export async function dataFilesystem(client: Client): Promise<string> {
  let directory: string;
  try {
    directory = (await client.query<{ dir: string }>(`SELECT current_setting('data_directory') AS dir`)).rows[0].dir;
  } catch {
    return 'unknown (data_directory is not readable by this role)';
  }
  if (!existsSync('/proc/mounts') || !existsSync(directory)) return `unknown (${directory} is not on this machine)`;
  let resolved: string;
  try {
    resolved = realpathSync(directory);
  } catch {
    return `unknown (${directory} cannot be resolved here)`;
  }
  return describeMount(mountOf(resolved, readFileSync('/proc/mounts', 'utf8')));
}
