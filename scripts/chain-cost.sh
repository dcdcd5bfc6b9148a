#!/usr/bin/env bash
# What the audit hash chain costs login and refresh (issue 8: at most 5 %). Builds the
# committed HEAD twice in a temporary folder, once as it is and once with AuditService.record()
# edited to write unchained events (scripts/pair-bench/unchain.js), then measures each route as
# pairs of the two services, each on a fresh database of its own (scripts/pair-bench/pair.js: A = unchained, without checkpoints,
# B = chained; B/A is the share of the throughput the chain leaves). Needs DATABASE_URL's server
# (the default: postgres://postgres@127.0.0.1:5432) and a quiet machine; takes about 8 minutes.
# Arguments go to pair.js (e.g. --rounds 12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/sessionary-chain-cost.XXXXXX")
trap 'rm -rf "$work"' EXIT
for variant in chained unchained; do
  mkdir "$work/$variant"
  git archive HEAD | tar -x -C "$work/$variant"
  ln -s "$REPO/node_modules" "$work/$variant/node_modules"
done
node scripts/pair-bench/unchain.js "$work/unchained"
for variant in chained unchained; do
  (cd "$work/$variant" && npx tsc -p tsconfig.build.json)
done
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
for route in refresh login; do
  echo "== $route"
  # The services' warnings and the refresh chains' re-logins too: a run with either is not a clean one.
  node scripts/pair-bench/pair.js --a "$work/unchained" --b "$work/chained" --route "$route" --server "$server" --rounds 8 --seconds 4 "$@" | grep -E "req/s|B/A|logged|re-logged"
done
