#!/usr/bin/env bash
# Start the sandbox API on loopback, run 'calsync sync' against it, and run
# the shared icscheck tool on the feed it writes. Assumes .venv is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/calsync sandbox --port "$port" >"$work/sandbox.log" 2>&1 &
sandbox_pid=$!
trap 'kill "$sandbox_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 50); do
  if .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done

cat >"$work/calsync.toml" <<TOML
[cashfin]
base_url = "http://127.0.0.1:$port"
client_secret = "sandbox-secret"

[sync]
state_dir = "$work/state"

[calendar]
uid_domain = "ci.calsync.invalid"

[[feeds]]
name = "bookings"
token = "ci-token"
alarms = ["15m"]

[[feeds]]
name = "busy"
token = "ci-token"
details = "busy"
TOML

.venv/bin/calsync --config "$work/calsync.toml" sync
first=$(sha256sum "$work/state/feeds/bookings.ics")

# A second sync of unchanged data must fetch no details and leave the feed byte-identical.
.venv/bin/calsync --config "$work/calsync.toml" sync 2>"$work/second.log"
cat "$work/second.log"
grep -q " 0 details fetched" "$work/second.log" || { echo "second sync fetched details" >&2; exit 1; }
[ "$first" = "$(sha256sum "$work/state/feeds/bookings.ics")" ] || { echo "second sync changed the feed" >&2; exit 1; }

../shared/tools/icscheck "$work/state/feeds/bookings.ics" "$work/state/feeds/busy.ics"
