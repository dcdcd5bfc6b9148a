#!/usr/bin/env node
/*
 * Paired throughput comparison of two Sessionary builds, each on a database of its own on one server.
 *
 *   node scripts/pair-bench/pair.js --a DIR_A --b DIR_B --route refresh|login|whoami
 *        [--rounds 8] [--seconds 5] [--connections 16] [--warmup 8]
 *        [--env KEY=VALUE ...] [--keep-logs]
 *
 * DIR_A / DIR_B are built trees (each has dist/src/main.js and node_modules); scripts/chain-cost.sh
 * makes two and runs this on them.
 * Rounds run A, B, A, B, ..., A, B, A: `--rounds` B rounds, each between two A rounds, so every
 * B round has the A rounds on both sides of it; ratio_i = B_i / mean(A_i, A_{i+1}).
 * Each round loads only one of the two services; both run the whole time. Each has its own
 * database (until 0.24.2 they shared one, so that B's extra writes, dead row versions and their
 * vacuum landed in A's rounds too, half the time), and a server CHECKPOINT comes before every
 * round, outside its timing, so that no round inherits the other's pending WAL work.
 */
'use strict';

const { spawn } = require('node:child_process');
const { randomBytes } = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { performance } = require('node:perf_hooks');

const NM = process.env.PAIR_NODE_MODULES || path.join(__dirname, '..', '..', 'node_modules');
const autocannon = require(path.join(NM, 'autocannon'));
const { Client } = require(path.join(NM, 'pg'));

// ---------------------------------------------------------------- arguments
function parseArgs(argv) {
  const o = { rounds: 8, seconds: 5, connections: 16, warmup: 8, env: {}, keepLogs: false, server: 'postgres://postgres@127.0.0.1:5432/postgres' };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) usage(`${k} needs a value`);
      return argv[++i];
    };
    switch (k) {
      case '--a':
        o.a = path.resolve(v());
        break;
      case '--b':
        o.b = path.resolve(v());
        break;
      case '--route':
        o.route = v();
        break;
      case '--rounds':
        o.rounds = int(k, v());
        break;
      case '--seconds':
        o.seconds = int(k, v());
        break;
      case '--connections':
        o.connections = int(k, v());
        break;
      case '--warmup':
        o.warmup = int(k, v(), 0);
        break;
      case '--server':
        o.server = v();
        break;
      case '--env': {
        const kv = v();
        const eq = kv.indexOf('=');
        if (eq < 1) usage(`--env wants KEY=VALUE, got ${kv}`);
        o.env[kv.slice(0, eq)] = kv.slice(eq + 1);
        break;
      }
      case '--keep-logs':
        o.keepLogs = true;
        break;
      case '-h':
      case '--help':
        usage(); // exits
        break;
      default:
        usage(`unknown argument ${k}`);
    }
  }
  if (!o.a || !o.b) usage('--a and --b are required');
  if (!['refresh', 'login', 'whoami'].includes(o.route)) usage('--route must be refresh, login or whoami');
  for (const d of [o.a, o.b])
    if (!fs.existsSync(path.join(d, 'dist/src/main.js'))) usage(`${d}/dist/src/main.js is missing (make-build.sh builds it)`);
  return o;
}
function int(k, s, min = 1) {
  const n = Number(s);
  if (!Number.isInteger(n) || n < min) usage(`${k} must be an integer >= ${min}`);
  return n;
}
function usage(msg) {
  if (msg) console.error(`pair.js: ${msg}`);
  console.error(
    'usage: node pair.js --a DIR_A --b DIR_B --route refresh|login|whoami [--rounds 8] [--seconds 5] [--connections 16] [--warmup 8] [--env KEY=VALUE]... [--keep-logs]',
  );
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------- cleanup
const cleanups = []; // run in reverse order
let cleaningUp;
let currentLoad;
function cleanup() {
  if (!cleaningUp) {
    cleaningUp = (async () => {
      if (currentLoad) currentLoad.stop();
      while (cleanups.length) {
        const fn = cleanups.pop();
        try {
          await fn();
        } catch (e) {
          console.error(`cleanup: ${e && e.message}`);
        }
      }
    })();
  }
  return cleaningUp;
}
let signalled = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (signalled) return; // second Ctrl-C: cleanup is already under way
    signalled = true;
    console.error(`\n${sig}: stopping services, dropping the database...`);
    cleanup().finally(() => process.exit(130));
  });
}
const children = new Set();
process.on('exit', () => {
  for (const c of children)
    if (c.exitCode === null && c.signalCode === null)
      try {
        c.kill('SIGKILL');
      } catch {
        // already gone
      }
});

// ---------------------------------------------------------------- database
async function onServer(sql) {
  const c = new Client({ connectionString: opts.server });
  await c.connect();
  try {
    return await c.query(sql);
  } finally {
    await c.end();
  }
}
function dbUrl(name) {
  const u = new URL(opts.server);
  u.pathname = `/${name}`;
  return u.toString();
}

// ---------------------------------------------------------------- services
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Every variable a build reads (its ENV_VARIABLES), so none leaks in from our own environment. */
function serviceVariables(dir) {
  try {
    return require(path.join(dir, 'dist/src/config/env.schema.js')).ENV_VARIABLES;
  } catch {
    return [];
  }
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function tail(file, n = 30) {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '(no log)';
  }
}

async function startService(label, dir, port, env, runDir) {
  const logFile = path.join(runDir, `${label}.log`);
  const cwd = fs.mkdtempSync(path.join(runDir, `${label}-cwd-`)); // no .env, scratch DATA_DIR
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [path.join(dir, 'dist/src/main.js')], {
    cwd,
    env: { ...env, PORT: String(port), DATA_DIR: path.join(cwd, '.data') },
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  children.add(child);
  cleanups.push(() => stopChild(child));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`service ${label} exited (${child.signalCode ?? child.exitCode}) before it was ready; log ${logFile}:\n${tail(logFile)}`);
    }
    try {
      const res = await fetch(`${base}/health/ready`);
      if (res.ok) return { label, dir, base, child, logFile };
    } catch {
      /* not listening yet */
    }
    await sleep(200);
  }
  throw new Error(`service ${label} not ready within 120 s; log ${logFile}:\n${tail(logFile)}`);
}

function stopChild(child, graceMs = 8000) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      children.delete(child);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

// ---------------------------------------------------------------- API
async function post(url, body, expected) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  if (res.status !== expected) throw new Error(`POST ${new URL(url).pathname}: ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text);
}
async function registerUser(svc, tag) {
  const username = `pair_${tag}_${randomBytes(5).toString('hex')}`;
  const user = { username, email: `${username}@example.test`, password: `pw-${randomBytes(12).toString('base64url')}` };
  await post(`${svc.base}/api/v1/auth/register`, user, 201);
  return user;
}
function login(svc, user) {
  return post(`${svc.base}/api/v1/auth/login`, { email: user.email, password: user.password }, 200);
}
async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i], i);
      }
    }),
  );
  return out;
}

// ---------------------------------------------------------------- load
/**
 * Per-connection state. For refresh, `token` is the chain's current refresh token; a request
 * cut off by the end of a round (in flight) or refused leaves the chain without a known token,
 * so the chain logs in again before the next round (outside the measured time).
 */
async function seed(svc, n) {
  const users = await mapLimit(Array.from({ length: n }), 4, () => registerUser(svc, svc.label.toLowerCase()));
  const conns = users.map((user) => ({ user, token: null, inFlight: false, broken: true }));
  if (opts.route === 'refresh' || opts.route === 'whoami') await repair(svc, conns);
  return conns;
}
async function repair(svc, conns) {
  const bad = conns.filter((c) => c.inFlight || c.broken);
  await mapLimit(bad, 4, async (c) => {
    const t = await login(svc, c.user);
    c.token = t.refreshToken;
    c.access = t.accessToken;
    c.inFlight = false;
    c.broken = false;
  });
  return bad.length;
}

function setupClientFor(conns) {
  let next = 0;
  const pathName = `/api/v1/auth/${opts.route}`;
  return (client) => {
    const c = conns[next++ % conns.length];
    if (opts.route === 'whoami') {
      client.setRequests([{ method: 'GET', path: '/api/v1/auth/session', headers: { authorization: `Bearer ${c.access}` } }]);
      return;
    }
    if (opts.route === 'login') {
      client.setRequests([
        {
          method: 'POST',
          path: pathName,
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ email: c.user.email, password: c.user.password }),
        },
      ]);
      return;
    }
    client.setRequests([
      {
        method: 'POST',
        path: pathName,
        headers: { 'content-type': 'application/json' },
        setupRequest: (req) => {
          if (c.inFlight) c.broken = true; // should not happen: one request at a time per connection
          c.inFlight = true;
          return { ...req, body: JSON.stringify({ refreshToken: c.token }) };
        },
        onResponse: (status, body) => {
          c.inFlight = false;
          if (status !== 200) {
            c.broken = true;
            return;
          }
          c.token = JSON.parse(body).refreshToken;
        },
      },
    ]);
  };
}

function runLoad(svc, conns, seconds) {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let last = start;
    let responses = 0;
    const inst = autocannon(
      {
        url: svc.base,
        connections: conns.length,
        pipelining: 1,
        duration: seconds,
        timeout: 30,
        setupClient: setupClientFor(conns),
      },
      (err, result) => {
        currentLoad = undefined;
        if (err) return reject(err);
        const secs = (last - start) / 1000;
        const statusCodes = {};
        for (const [code, s] of Object.entries(result.statusCodeStats || {})) statusCodes[code] = s.count;
        resolve({
          svc: svc.label,
          responses,
          seconds: secs,
          rps: secs > 0 ? responses / secs : 0,
          p50: result.latency.p50,
          p99: result.latency.p99,
          non2xx: result.non2xx,
          errors: result.errors,
          timeouts: result.timeouts,
          statusCodes,
        });
      },
    );
    currentLoad = inst;
    inst.on('response', () => {
      responses++;
      last = performance.now();
    });
  });
}

// ---------------------------------------------------------------- stats
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const f1 = (x) => x.toFixed(1);
const f3 = (x) => x.toFixed(3);

// ---------------------------------------------------------------- main
async function main() {
  const secret = () => randomBytes(48).toString('base64url'); // 64 chars
  const dbName = `pair_${Date.now()}_${randomBytes(4).toString('hex')}`;
  const dbNames = { A: `${dbName}_a`, B: `${dbName}_b` };
  const runDir = path.join(os.tmpdir(), 'pair-runs', dbName);
  fs.mkdirSync(runDir, { recursive: true });
  cleanups.push(() => {
    if (!opts.keepLogs && process.exitCode !== 1) fs.rmSync(runDir, { recursive: true, force: true });
    else console.error(`logs kept in ${runDir}`);
  });

  for (const name of Object.values(dbNames)) {
    await onServer(`CREATE DATABASE "${name}"`);
    cleanups.push(async () => {
      await onServer(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      console.error(`dropped database ${name}`);
    });
  }
  console.log(`databases ${dbNames.A} (A) and ${dbNames.B} (B); logs in ${runDir}`);

  const env = { ...process.env };
  for (const k of new Set([...serviceVariables(opts.a), ...serviceVariables(opts.b), 'NODE_ENV'])) delete env[k];
  Object.assign(env, {
    HOST: '127.0.0.1',
    JWT_SECRET: secret(),
    PASSWORD_PEPPER: secret(),
    AUDIT_HMAC_KEY: secret(),
    KEY_ENCRYPTION_KEY: secret(),
    BCRYPT_COST: '4',
    LOG_LEVEL: 'warn',
    RATE_LIMIT_PER_MINUTE: '0', // 0 turns the per-IP limit off
    LOGIN_MAX_FAILURES_PER_IDENTIFIER: '1000000',
    LOGIN_MAX_FAILURES_PER_IP: '1000000',
    REGISTER_MAX_PER_IP: '0', // 0 turns the per-IP registration limit off (a build before 0.17.0 ignores it)
    ...opts.env,
  });
  const fixed = [
    'BCRYPT_COST',
    'LOG_LEVEL',
    'RATE_LIMIT_PER_MINUTE',
    'LOGIN_MAX_FAILURES_PER_IDENTIFIER',
    'LOGIN_MAX_FAILURES_PER_IP',
    'REGISTER_MAX_PER_IP',
  ];
  const shownKeys = [...fixed, ...Object.keys(opts.env).filter((k) => !fixed.includes(k))];
  console.log(
    `env (both): ${shownKeys.map((k) => `${k}=${env[k]}`).join(' ')} + random JWT_SECRET, PASSWORD_PEPPER, AUDIT_HMAC_KEY, KEY_ENCRYPTION_KEY`,
  );

  const [portA, portB] = [await freePort(), await freePort()];
  const A = await startService('A', opts.a, portA, { ...env, DATABASE_URL: dbUrl(dbNames.A) }, runDir);
  console.log(`A ready on ${A.base} (${opts.a})`);
  const B = await startService('B', opts.b, portB, { ...env, DATABASE_URL: dbUrl(dbNames.B) }, runDir);
  console.log(`B ready on ${B.base} (${opts.b})`);

  const n = opts.connections;
  const conns = { A: await seed(A, n), B: await seed(B, n) };
  console.log(`seeded ${n} users per service for ${opts.route}`);

  const svcs = { A, B };
  const relogins = { A: 0, B: 0 };
  const one = async (label, seconds) => {
    if (opts.route === 'refresh') relogins[label] += await repair(svcs[label], conns[label]);
    await onServer('CHECKPOINT');
    const r = await runLoad(svcs[label], conns[label], seconds);
    if (signalled) throw new Error('interrupted');
    for (const [lbl, s] of Object.entries(svcs)) {
      if (s.child.exitCode !== null || s.child.signalCode !== null) throw new Error(`service ${lbl} died; log:\n${tail(s.logFile)}`);
    }
    if (r.non2xx || r.errors || r.timeouts) {
      throw new Error(
        `!!! ${label}: ${r.non2xx} non-2xx, ${r.errors} errors, ${r.timeouts} timeouts in a round (status codes ${JSON.stringify(r.statusCodes)}); ` +
          `the comparison is void. Log of ${label}:\n${tail(svcs[label].logFile)}`,
      );
    }
    return r;
  };

  if (opts.warmup > 0) {
    // Two alternations: JIT, PostgreSQL's caches and the tables' first growth settle before round 1.
    for (const label of ['A', 'B', 'A', 'B']) {
      const r = await one(label, opts.warmup);
      console.log(`warm-up ${label}: ${f1(r.rps)} req/s`);
    }
  }

  const order = [];
  for (let i = 0; i < opts.rounds; i++) order.push('A', 'B');
  order.push('A');
  const res = { A: [], B: [] };
  console.log(`\nround  svc   req/s     reqs   p50ms  p99ms  non2xx`);
  for (let i = 0; i < order.length; i++) {
    const label = order[i];
    const r = await one(label, opts.seconds);
    res[label].push(r.rps);
    console.log(
      `${String(i + 1).padStart(5)}  ${label}   ${f1(r.rps).padStart(8)}  ${String(r.responses).padStart(7)}  ${String(r.p50).padStart(5)}  ${String(r.p99).padStart(5)}  ${r.non2xx}`,
    );
  }

  const ratios = res.B.map((b, i) => b / ((res.A[i] + res.A[i + 1]) / 2));
  console.log(`\nroute ${opts.route}, ${opts.rounds} pairs x ${opts.seconds}s, ${n} connections`);
  console.log(`A req/s: mean ${f1(mean(res.A))}  median ${f1(median(res.A))}  [${res.A.map(f1).join(', ')}]`);
  console.log(`B req/s: mean ${f1(mean(res.B))}  median ${f1(median(res.B))}  [${res.B.map(f1).join(', ')}]`);
  console.log(`B/A per pair: [${ratios.map(f3).join(', ')}]`);
  console.log(`B/A median ${f3(median(ratios))}  mean ${f3(mean(ratios))}  min ${f3(Math.min(...ratios))}  max ${f3(Math.max(...ratios))}`);
  for (const s of [A, B]) {
    const lines = fs.readFileSync(s.logFile, 'utf8').split('\n').filter(Boolean);
    if (lines.length) console.log(`service ${s.label} logged ${lines.length} line(s) at warn or above, e.g.: ${lines[0].slice(0, 300)}`);
  }
  if (opts.route === 'refresh')
    console.log(`(chains re-logged in between rounds: A ${relogins.A}, B ${relogins.B}; requests cut off at a round's end)`);
}

main()
  .then(() => cleanup())
  .then(() => process.exit(0))
  .catch(async (e) => {
    if (signalled) return; // the signal handler cleans up and exits
    console.error(`\npair.js FAILED: ${e && e.stack ? e.stack : e}`);
    process.exitCode = 1;
    await cleanup();
    process.exit(1);
  });
