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

/** The table the write notes go to: the fingerprinter's own, left out of the picture. */
const WRITTEN = 'fuzz_written';
/** A note meaning "any table may have changed" (DDL). */
const EVERY_TABLE = '*';

/**
 * A complete picture of the database: for every table of the schema, its row count and an md5
 * over all its rows (as jsonb text, in a fixed order). Tables are discovered at first use, so a
 * table added by a later migration is covered without touching this file.
 *
 * Digesting every table costs about 5 ms, which the fuzz test paid after each of its ~7,000
 * requests (40 s of its 77 s), though about one request in a hundred writes anything. So the
 * first take installs, in the test's own database, triggers that note which tables a statement
 * wrote: a row trigger for INSERT, UPDATE and DELETE on every table (PostgreSQL clones it to
 * every partition, present and future, and fires it whoever writes, however), a statement
 * trigger for TRUNCATE on every table and partition, and an event trigger that notes "every
 * table" after any DDL (a dropped or detached partition changes its table without DML). A take
 * digests again only the tables noted since the last one; the others cannot have changed, so
 * their digests are the ones taken before. Triggers that are disabled, or
 * `session_replication_role = replica`, would hide writes: the service does neither.
 */
export class DbFingerprinter {
  private tableNames?: string[];
  private latest: Record<string, TableFingerprint & { maxSeq: string | null }> = {};

  constructor(private readonly db: DataSource) {}

  async take(): Promise<DbFingerprint> {
    let changed: string[];
    if (!this.tableNames) {
      this.tableNames = await this.discoverTables();
      await this.installWriteNotes(this.tableNames);
      changed = this.tableNames; // after the triggers exist, so no write falls between the two
    } else {
      const notes: Array<{ name: string }> = await this.db.query(
        `WITH noted AS (DELETE FROM ${WRITTEN} RETURNING name) SELECT DISTINCT name FROM noted`,
      );
      const names = new Set(notes.map((n) => n.name));
      changed = names.has(EVERY_TABLE) ? await this.discoverTables() : this.tableNames.filter((t) => names.has(t));
      if (names.has(EVERY_TABLE)) {
        this.tableNames = changed;
        this.latest = {};
      }
    }
    if (changed.length) {
      const rows: Array<{ t: string; rows: number; digest: string; max_seq: string | null }> = await this.db.query(digestQuery(changed));
      for (const r of rows) this.latest[r.t] = { rows: r.rows, digest: r.digest, maxSeq: r.max_seq };
    }
    const tables: Record<string, TableFingerprint> = {};
    for (const [name, { rows, digest }] of Object.entries(this.latest)) tables[name] = { rows, digest };
    return { tables, auditMaxSeq: this.latest.audit_events?.maxSeq ?? '0' };
  }

  /** The same picture digested from every table now, whatever the notes say: what take() must equal. */
  async takeWhole(): Promise<DbFingerprint> {
    const rows: Array<{ t: string; rows: number; digest: string; max_seq: string | null }> = await this.db.query(
      digestQuery(await this.discoverTables()),
    );
    const tables: Record<string, TableFingerprint> = {};
    for (const r of rows) tables[r.t] = { rows: r.rows, digest: r.digest };
    return { tables, auditMaxSeq: rows.find((r) => r.t === 'audit_events')?.max_seq ?? '0' };
  }

  /** The digest audit_events had when its last event was `maxSeq`: unchanged if only new events were added. */
  async auditDigestUpTo(maxSeq: string): Promise<string> {
    const [row] = await this.db.query(`SELECT ${digestOf('x')} AS digest FROM audit_events x WHERE x.seq <= $1::bigint`, [maxSeq]);
    return row.digest;
  }

  async auditEventsAfter(seq: string): Promise<Array<{ type: string; text: string }>> {
    return this.db.query(`SELECT type, to_jsonb(x)::text AS text FROM audit_events x WHERE seq > $1::bigint ORDER BY seq`, [seq]);
  }

  /** The schema's tables (partitioned ones as one), without the notes table. */
  private async discoverTables(): Promise<string[]> {
    const tables: Array<{ name: string }> = await this.db.query(
      `SELECT c.relname AS name FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname <> $1
        ORDER BY c.relname`,
      [WRITTEN],
    );
    return tables.map((t) => t.name);
  }

  private async installWriteNotes(tables: string[]): Promise<void> {
    // Partitions too, for TRUNCATE: statement triggers are not cloned to them.
    const relations: Array<{ name: string; parent: string }> = await this.db.query(
      `SELECT c.relname AS name, coalesce(p.relname, c.relname) AS parent
         FROM pg_class c
         LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
         LEFT JOIN pg_class p ON p.oid = i.inhparent
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND c.relname <> $1`,
      [WRITTEN],
    );
    const statements = [
      `CREATE TABLE ${WRITTEN} (name text NOT NULL)`,
      `CREATE FUNCTION fuzz_note_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ${WRITTEN} (name) VALUES (TG_ARGV[0]); RETURN NULL; END $$`,
      ...tables.map(
        (t) =>
          `CREATE TRIGGER fuzz_note_write AFTER INSERT OR UPDATE OR DELETE ON ${ident(t)} FOR EACH ROW EXECUTE FUNCTION fuzz_note_write(${literal(t)})`,
      ),
      ...relations.map(
        (r) =>
          `CREATE TRIGGER fuzz_note_truncate AFTER TRUNCATE ON ${ident(r.name)} FOR EACH STATEMENT EXECUTE FUNCTION fuzz_note_write(${literal(r.parent)})`,
      ),
      `CREATE FUNCTION fuzz_note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ${WRITTEN} (name) VALUES (${literal(EVERY_TABLE)}); END $$`,
      `CREATE EVENT TRIGGER fuzz_note_ddl ON ddl_command_end EXECUTE FUNCTION fuzz_note_ddl()`,
    ];
    await this.db.transaction(async (em) => {
      for (const statement of statements) await em.query(statement);
    });
  }
}

/** One row per table: its name, row count, digest, and for audit_events the highest seq. */
function digestQuery(tables: string[]): string {
  return tables
    .map((name) => {
      const maxSeq = name === 'audit_events' ? 'max(x.seq)::text' : 'NULL::text';
      return `SELECT ${literal(name)} AS t, count(*)::int AS rows, ${digestOf('x')} AS digest, ${maxSeq} AS max_seq FROM ${ident(name)} x`;
    })
    .join('\nUNION ALL\n');
}

function digestOf(alias: string): string {
  const row = ACTIVITY_COLUMNS.reduce((expr, column) => `${expr} - '${column}'`, `to_jsonb(${alias})`);
  return `md5(coalesce(string_agg((${row})::text, E'\\n' ORDER BY (${row})::text), ''))`;
}

function ident(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
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
