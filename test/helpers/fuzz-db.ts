import { DataSource } from 'typeorm';

/** Row count and a digest of every row of one table. */
export interface TableFingerprint {
  rows: number;
  digest: string;
}

export interface DbFingerprint {
  tables: Record<string, TableFingerprint>;
  /** The highest audit_events.seq, so the events a request added can be told from the old ones. */
  auditMaxSeq: string;
}

/**
 * Columns left out of the digest. A request on an authenticated route may legitimately
 * record activity on the caller's session before the handler even sees the input (the
 * guard extends the idle deadline at most once a minute, see session-rules.ts), so bad
 * input on such a route can move these two columns and nothing else.
 */
const ACTIVITY_COLUMNS = ['last_seen_at', 'idle_expires_at'];

/**
 * A cheap, complete picture of the database: for every table of the schema, its row count
 * and an md5 over all its rows (as jsonb text, in a fixed order). Tables are discovered at
 * first use, so a table added by a later migration is covered without touching this file.
 */
export class DbFingerprinter {
  private query?: string;

  constructor(private readonly db: DataSource) {}

  async take(): Promise<DbFingerprint> {
    this.query ??= await this.buildQuery();
    const rows: Array<{ t: string; rows: number; digest: string; max_seq: string | null }> = await this.db.query(this.query);
    const tables: Record<string, TableFingerprint> = {};
    let auditMaxSeq = '0';
    for (const r of rows) {
      tables[r.t] = { rows: r.rows, digest: r.digest };
      if (r.t === 'audit_events') auditMaxSeq = r.max_seq ?? '0';
    }
    return { tables, auditMaxSeq };
  }

  /** The digest audit_events had when its last event was `maxSeq`: unchanged if only new events were added. */
  async auditDigestUpTo(maxSeq: string): Promise<string> {
    const [row] = await this.db.query(`SELECT ${digestOf('x')} AS digest FROM audit_events x WHERE x.seq <= $1::bigint`, [maxSeq]);
    return row.digest;
  }

  async auditEventsAfter(seq: string): Promise<Array<{ type: string; text: string }>> {
    return this.db.query(`SELECT type, to_jsonb(x)::text AS text FROM audit_events x WHERE seq > $1::bigint ORDER BY seq`, [seq]);
  }

  private async buildQuery(): Promise<string> {
    const tables: Array<{ name: string }> = await this.db.query(
      `SELECT c.relname AS name FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
        ORDER BY c.relname`,
    );
    return tables
      .map(({ name }) => {
        const ident = `"${name.replace(/"/g, '""')}"`;
        const maxSeq = name === 'audit_events' ? 'max(x.seq)::text' : 'NULL::text';
        return `SELECT ${literal(name)} AS t, count(*)::int AS rows, ${digestOf('x')} AS digest, ${maxSeq} AS max_seq FROM ${ident} x`;
      })
      .join('\nUNION ALL\n');
  }
}

function digestOf(alias: string): string {
  const row = ACTIVITY_COLUMNS.reduce((expr, column) => `${expr} - '${column}'`, `to_jsonb(${alias})`);
  return `md5(coalesce(string_agg((${row})::text, E'\\n' ORDER BY (${row})::text), ''))`;
}

function literal(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/** The tables whose row count or digest differ, with both versions, for a failure message. */
export function diffFingerprints(before: DbFingerprint, after: DbFingerprint, ignore: string[] = []): string[] {
  const names = new Set([...Object.keys(before.tables), ...Object.keys(after.tables)]);
  const diffs: string[] = [];
  for (const name of names) {
    if (ignore.includes(name)) continue;
    const a = before.tables[name];
    const b = after.tables[name];
    if (!a || !b || a.rows !== b.rows || a.digest !== b.digest) {
      diffs.push(`${name}: ${a ? `${a.rows} rows ${a.digest}` : 'absent'} -> ${b ? `${b.rows} rows ${b.digest}` : 'absent'}`);
    }
  }
  return diffs;
}
