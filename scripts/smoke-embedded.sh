#!/usr/bin/env bash
# Smoke test of the embedded-PostgreSQL default: boots the built app (dist/) with no
# DATABASE_URL and a fresh DATA_DIR, registers, logs in, reads /users/me, sends SIGTERM and
# checks that the app exits and leaves no PostgreSQL running for that DATA_DIR.
# Build first (npx tsc -p tsconfig.json). Usage: bash scripts/smoke-embedded.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

READY_TIMEOUT_S=90
EXIT_TIMEOUT_S=30

work_dir=$(mktemp -d "${TMPDIR:-/tmp}/sessionary-smoke.XXXXXX")
data_dir="$work_dir/data"
app_log="$work_dir/app.log"
body="$work_dir/body.json"
app_pid=""
result="FAIL"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Postmasters whose command line names a data dir inside $data_dir (backends rename themselves,
# but they end with their postmaster).
postgres_pids() {
  local proc cmdline
  for proc in /proc/[0-9]*; do
    cmdline=$(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null) || continue
    case "$cmdline" in
      *postgres*" -D $data_dir"*) echo "${proc#/proc/}" ;;
    esac
  done
}

cleanup() {
  local status=$?
  if [ -n "$app_pid" ] && kill -0 "$app_pid" 2>/dev/null; then
    kill -TERM "$app_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$app_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$app_pid" 2>/dev/null || true
  fi
  local pid
  for pid in $(postgres_pids); do kill -INT "$pid" 2>/dev/null || true; done
  if [ "$result" != "PASS" ]; then
    echo "----- app log ($app_log) -----" >&2
    cat "$app_log" >&2 2>/dev/null || true
    echo "----- end of app log -----" >&2
    echo "FAIL: embedded PostgreSQL smoke test" >&2
    [ "$status" -ne 0 ] || status=1
  fi
  rm -rf "$work_dir"
  exit "$status"
}
trap cleanup EXIT

# request METHOD PATH [JSON] [TOKEN]: prints the HTTP status, leaves the body in $body.
request() {
  local args=(-sS --max-time 10 -o "$body" -w '%{http_code}' -X "$1" "http://127.0.0.1:$port$2")
  [ -z "${3:-}" ] || args+=(-H 'Content-Type: application/json' --data "$3")
  [ -z "${4:-}" ] || args+=(-H "Authorization: Bearer $4")
  curl "${args[@]}" 2>/dev/null || true  # curl prints 000 when nothing answered
}

expect_status() {
  local expected=$1 actual=$2 what=$3
  [ "$actual" = "$expected" ] || fail "$what answered $actual, expected $expected: $(cat "$body" 2>/dev/null)"
  echo "ok: $what -> $actual"
}

# json_field NAME: prints that top-level string field of $body.
json_field() {
  node -e '
    const value = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[process.argv[2]];
    if (typeof value !== "string" || !value) process.exit(1);
    process.stdout.write(value);
  ' "$body" "$1"
}

command -v curl >/dev/null || fail "curl is not installed"
[ -f dist/src/main.js ] || fail "dist/src/main.js is missing: build the project first (npx tsc -p tsconfig.json)"

port=$(node -e '
  const server = require("net").createServer();
  server.listen(0, "127.0.0.1", () => { process.stdout.write(String(server.address().port)); server.close(); });
')
mkdir -p "$data_dir"

echo "Starting the app on port $port with DATA_DIR=$data_dir (no DATABASE_URL)"
env -u DATABASE_URL DATA_DIR="$data_dir" PORT="$port" node dist/src/main.js >"$app_log" 2>&1 &
app_pid=$!

deadline=$((SECONDS + READY_TIMEOUT_S))
until [ "$(request GET /health/ready)" = "200" ]; do
  kill -0 "$app_pid" 2>/dev/null || fail "the app exited before /health/ready answered 200"
  [ "$SECONDS" -lt "$deadline" ] || fail "/health/ready did not answer 200 within ${READY_TIMEOUT_S} s"
  sleep 0.5
done
echo "ok: GET /health/ready -> 200"

suffix="$(date +%s)$RANDOM"
username="smoke_$suffix"
email="smoke_$suffix@example.com"
password="Smoke test passphrase $suffix"

status=$(request POST /api/v1/auth/register "{\"username\":\"$username\",\"email\":\"$email\",\"password\":\"$password\"}")
expect_status 201 "$status" "POST /api/v1/auth/register"

status=$(request POST /api/v1/auth/login "{\"email\":\"$email\",\"password\":\"$password\"}")
expect_status 200 "$status" "POST /api/v1/auth/login"
token=$(json_field accessToken) || fail "the login response has no accessToken"

status=$(request GET /api/v1/users/me "" "$token")
expect_status 200 "$status" "GET /api/v1/users/me"
[ "$(json_field username || true)" = "$username" ] || fail "/users/me did not return username $username: $(cat "$body")"
echo "ok: /users/me returns $username"

kill -TERM "$app_pid"
deadline=$((SECONDS + EXIT_TIMEOUT_S))
while kill -0 "$app_pid" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "the app did not exit within ${EXIT_TIMEOUT_S} s of SIGTERM"
  sleep 0.2
done
exit_status=0
wait "$app_pid" || exit_status=$?
app_pid=""
# 143 = terminated by the re-raised SIGTERM (Nest's default); 0 = a clean process.exit(0).
[ "$exit_status" = "143" ] || [ "$exit_status" = "0" ] || fail "the app exited with status $exit_status after SIGTERM"
echo "ok: the app exited after SIGTERM (status $exit_status)"

leftover=$(postgres_pids)
[ -z "$leftover" ] || fail "PostgreSQL is still running for $data_dir (pid $leftover)"
leftover=$(find "$data_dir" -name postmaster.pid 2>/dev/null)
[ -z "$leftover" ] || fail "PostgreSQL did not shut down cleanly: $leftover remains"
echo "ok: no PostgreSQL left running for $data_dir"

result="PASS"
echo "PASS: embedded PostgreSQL smoke test"
