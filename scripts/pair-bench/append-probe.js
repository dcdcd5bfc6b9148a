#!/usr/bin/env node
/*
 * What one audit append costs PostgreSQL, statement by statement, without HTTP or Node's share:
 *
 *   node scripts/pair-bench/append-probe.js DATABASE_URL [variants] (N=3000 per block)
 *
 * One client, `synchronous_commit` off (so that fsync does not swamp the difference), six
 * blocks of N transactions per variant, the variants interleaved block by block; prints the
 * microseconds per transaction of each block and their median. Variants (comma-separated,
 * default all): empty (BEGIN, COMMIT), unchained (the INSERT of scripts/pair-bench/unchain.js),
 * chained (AuditService's APPEND_IF_HEAD, from dist/: run `npm run build` first), headonly (the
 * head's UPDATE alone), insertonly (the chained INSERT alone, INSERT_EVENTS, on chains of its own).
 * It writes events and heads for 16 random users: point it at a migrated copy, never at a
 * database that matters (e.g. CREATE DATABASE probe TEMPLATE <a kept audit bench database>).
 */
'use strict';
const path = require('node:path');
const { randomUUID, createHash } = require('node:crypto');
const { Client } = require(path.join(__dirname, '..', '..', 'node_modules', 'pg'));

// The service's own statements, from the build (`npm run build` first).
const { APPEND_IF_HEAD, INSERT_EVENTS } = require(path.join(__dirname, '..', '..', 'dist', 'src', 'audit', 'audit.service.js'));
const STATEMENTS = {
  chained: APPEND_IF_HEAD,
  unchained: `INSERT INTO audit_events (id, type, user_id, session_id, ip_address, user_agent, metadata)
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::jsonb[])`,
  insertonly: INSERT_EVENTS,
  headonly: `UPDATE audit_chain_heads SET position = $2, hash = $3, last_event_at = $4::timestamptz WHERE chain_key = $1`,
  empty: null,
};
const GENESIS = '0'.repeat(64);
const BLOCKS = 6;

async function main() {
  const [url, list] = process.argv.slice(2);
  if (!url) throw new Error('usage: append-probe.js DATABASE_URL [variants]');
  const variants = (list || Object.keys(STATEMENTS).join(',')).split(',');
  for (const v of variants) if (!(v in STATEMENTS)) throw new Error(`unknown variant ${v}`);
  const perBlock = Number(process.env.N || 3000);
  const client = new Client({ connectionString: url });
  await client.connect();
  await client.query('SET synchronous_commit = off');
  const users = Array.from({ length: 16 }, () => randomUUID());
  /** Each chain's head as this probe left it (insertonly's chains are apart: it moves no head). */
  const heads = new Map();
  for (const u of users) {
    await client.query(`INSERT INTO audit_chain_heads (chain_key, position, hash) VALUES ($1, 0, $2)`, [u, GENESIS]);
  }
  let clock = Date.now();
  const times = Object.fromEntries(variants.map((v) => [v, []]));
  for (let block = 0; block < BLOCKS; block++) {
    for (const v of variants) {
      const start = process.hrtime.bigint();
      for (let i = 0; i < perBlock; i++) {
        const user = users[i % users.length];
        const key = v === 'insertonly' ? `x${user}` : user;
        const head = heads.get(key) ?? { position: 0, hash: GENESIS };
        const hash = createHash('sha256').update(`${head.hash}${v}${block}.${i}`).digest('hex');
        const at = new Date((clock += 1)).toISOString().replace('Z', '000Z');
        const event = [[randomUUID()], ['TOKEN_REFRESH'], [user], [randomUUID()], ['10.0.0.1'], ['probe/1.0'], ['{}']];
        const chain = [at, [key], [head.position + 1], [head.hash], [hash]];
        await client.query('BEGIN');
        if (v === 'unchained') await client.query({ name: v, text: STATEMENTS[v], values: event });
        else if (v === 'headonly') await client.query({ name: v, text: STATEMENTS[v], values: [key, head.position + 1, hash, at] });
        else if (v === 'insertonly') await client.query({ name: v, text: STATEMENTS[v], values: [...event, ...chain] });
        else if (v === 'chained') {
          const values = [...event, ...chain, key, head.position + 1, hash, head.position, head.hash];
          const { rowCount } = await client.query({ name: v, text: STATEMENTS[v], values });
          if (rowCount !== 1) throw new Error('the head was not where this probe left it');
        }
        await client.query('COMMIT');
        if (v !== 'unchained' && v !== 'empty') heads.set(key, { position: head.position + 1, hash });
      }
      times[v].push(Number(process.hrtime.bigint() - start) / 1e3 / perBlock);
    }
  }
  for (const v of variants) {
    const sorted = [...times[v]].sort((a, b) => a - b);
    console.log(
      `${v.padEnd(10)} µs per transaction, blocks: ${times[v].map((t) => t.toFixed(0)).join(' ')}; median ${sorted[BLOCKS / 2].toFixed(0)}`,
    );
  }
  await client.end();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
