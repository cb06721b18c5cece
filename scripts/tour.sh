#!/usr/bin/env bash
# A first look at Tundra on the embedded default: initialise a home, add a server, issue a
# read-only API token, then prove the audit log is intact. Safe to run again.
set -euo pipefail
: "${TUNDRA_HOME:=$PWD/tundra-home}"
export TUNDRA_HOME
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "Tundra home: $TUNDRA_HOME (embedded SQLite database and KV store)"
step tundra init --generate-password
tundra server show web-1 >/dev/null 2>&1 || step tundra server add web-1 --address 203.0.113.10 --tag demo
step tundra server list
step tundra token create --name tour-readonly --scope servers:read --server web-1 --expires 1d
step tundra token list
step tundra key status
step tundra audit list --limit 10
step tundra audit checkpoint
step tundra audit verify --checkpoint "$(ls -t "$TUNDRA_HOME"/checkpoints/*.note | head -n 1)"
printf '\nDone. Everything above is in %s; `make clean-demo` removes it.\n' "$TUNDRA_HOME"
