#!/usr/bin/env node
/*
 * For the measurement only (scripts/chain-cost.sh): edits the source tree given as the first
 * argument so that AuditService.record() writes its events unchained, one prepared INSERT with
 * no head lock, no HMAC and no head update, and so that it writes no checkpoints (which are the
 * chain's too: until 0.24.2 the control kept them, every AUDIT_CHECKPOINT_EVERY events, so
 * their cost cancelled out of B/A and the chain's cost read lower than it is). Everything else
 * in the tree stays as it is.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const file = path.join(process.argv[2], 'src', 'audit', 'audit.service.ts');
let source = fs.readFileSync(file, 'utf8');
const start = source.indexOf('    const keys = [...new Set(rows.map((r) => r.chainKey))].sort();');
const end = source.indexOf("    // The host's listeners hear of it once the caller's transaction commits.");
if (start < 0 || end < start) throw new Error(`${file}: record() is not as this script expects; update scripts/pair-bench/unchain.js`);
const unchained = `    await sql(
      em,
      \`INSERT INTO audit_events (id, type, user_id, session_id, ip_address, user_agent, metadata)
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::jsonb[])\`,
      [rows.map((r) => r.id), rows.map((r) => r.type), rows.map((r) => r.userId), rows.map((r) => r.sessionId),
       rows.map((r) => r.ipAddress), rows.map((r) => r.userAgent), rows.map((r) => r.metadata)],
      { prepareAs: 'unchained_insert' },
    );
    const chained = rows.map((r) => ({ ...r, createdAt: new Date().toISOString(), position: 0, prevHash: '', hash: '' }));
`;
source = `// @ts-nocheck (a measurement-only build: see scripts/pair-bench/unchain.js)\n${source.slice(0, start)}${unchained}${source.slice(end)}`;
fs.writeFileSync(file, source);
console.log(`unchained: ${file}`);

const task = path.join(process.argv[2], 'src', 'audit', 'audit-checkpoint.task.ts');
let taskSource = fs.readFileSync(task, 'utf8');
const tick = '  async handleTick(): Promise<Checkpoint | undefined> {\n';
if (!taskSource.includes(tick)) throw new Error(`${task}: handleTick() is not as this script expects; update scripts/pair-bench/unchain.js`);
taskSource = `// @ts-nocheck (a measurement-only build: see scripts/pair-bench/unchain.js)\n${taskSource.replace(
  tick,
  `${tick}    return undefined; // unchained: no checkpoints either\n`,
)}`;
fs.writeFileSync(task, taskSource);
console.log(`no checkpoints: ${task}`);
