#!/usr/bin/env bash
# Runs schemathesis, with every check, against a real chatgate (the debug
# binary, in front of its bundled mock upstream) on a free loopback port.
# Usage: tests/schema/run.sh PYTHON_VENV [EXAMPLES]
#
# A fixed seed (SEED, default 20261129; CI runs three) and a fixed number
# of examples per operation (not a time budget) make a run repeatable: the
# same build passes or fails the same way.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$(cd "$1" && pwd)"  # absolute: the run below happens in tests/schema
examples="${2:-150}"
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
(
    cd "$work"
    # The quotas are raised so that the fuzzer tests the contract, not the
    # limits of one session or one address (429s are allowed by the checks
    # anyway).
    CHATGATE_SERVER__BIND="127.0.0.1:$port" \
    CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE=1000000 \
    CHATGATE_RATE_LIMIT__ADDRESS_MESSAGES_PER_MINUTE=1000000 \
    CHATGATE_RATE_LIMIT__SESSIONS_PER_HOUR=1000000 \
    CHATGATE_RATE_LIMIT__FEEDBACK_PER_HOUR=1000000 \
    CHATGATE_LOG__STDERR=off \
    exec "$root/target/debug/chatgate" --mock-upstream
) &
gateway=$!
trap 'kill "$gateway" 2>/dev/null; wait "$gateway" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
cd "$here"
"$venv/bin/schemathesis" --config-file "$here/schemathesis.toml" run "http://127.0.0.1:$port/openapi.json" \
    --checks all --seed "${SEED:-20261129}" --max-examples "$examples" --workers 1 --no-color
