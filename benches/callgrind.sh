#!/usr/bin/env bash
# Instructions per /chat/ turn, counted by valgrind's callgrind: repeatable
# for the same binary and inputs, whatever else the machine is doing, so two
# builds can be compared on a noisy host. Runs the gateway of a load-bench
# build (`GATEWAY_EXE __gateway`) under callgrind on one runtime thread, in
# front of the mock of `MOCK_EXE` (default: the same build), on the bench's
# defaults (SQLite, file logging with content and SQL on), drives 200 then
# 1,200 sequential turns of one session over one keep-alive connection, and
# prints the difference divided by 1,000: the start-up cost cancels out.
#
# Usage: benches/callgrind.sh GATEWAY_EXE [MOCK_EXE]
#   e.g. benches/callgrind.sh target/release/examples/loadtest
# With ROUTED=1, the model is a route over two upstreams of equal weight
# (both the same mock): what routing adds to a turn. With RESPONSES=1 each
# turn is a stored response (`POST /v1/responses` joining the session as a
# conversation) instead: what the Responses API adds. With CG_OUT=PATH the
# larger run's callgrind profile is kept there (for callgrind_annotate).
set -euo pipefail
gateway="$(realpath "$1")"
mock="$(realpath "${2:-$1}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat > "$work/drive.py" <<'PY'
import http.client, json, sys
port, n, responses = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
c.request("POST", "/session/initialize_session", body=b"")
sid = json.loads(c.getresponse().read())["session_id"]
conv = "conv_" + sid.replace("-", "")
for i in range(n):
    text = f"Hello, how are you? #{10000 + i}"
    if responses:
        path, body = "/v1/responses", json.dumps({"model": "gpt-3.5-turbo", "input": text, "conversation": conv})
    else:
        path, body = "/chat/", json.dumps({"session_id": sid, "role": "user", "content": text})
    c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY

# Instructions the gateway ran for $1 turns (start-up included).
count() {
    local n=$1 dir="$work/run$1" port mport gw
    mkdir -p "$dir"
    coproc MOCK { exec "$mock" __mock; }
    read -r -u "${MOCK[0]}" mport
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    local routed=()
    if [ "${ROUTED:-}" = 1 ]; then
        routed=(CHATGATE_UPSTREAMS__A__BASE_URL="http://127.0.0.1:$mport/v1"
            CHATGATE_UPSTREAMS__A__AUTH=none
            CHATGATE_UPSTREAMS__B__BASE_URL="http://127.0.0.1:$mport/v1"
            CHATGATE_UPSTREAMS__B__AUTH=none
            CHATGATE_OPENAI__MODEL=routed
            'CHATGATE_MODELS__ROUTED__TARGETS=[{"upstream":"a","model":"gpt-3.5-turbo"},{"upstream":"b","model":"gpt-3.5-turbo"}]')
    fi
    # In a directory of its own: no config.toml or .env of the caller's.
    (cd "$dir" && CHATGATE_SERVER__BIND="127.0.0.1:$port" \
    CHATGATE_OPENAI__BASE_URL="http://127.0.0.1:$mport/v1" \
    CHATGATE_STORAGE__PATH="$dir/chat.db" CHATGATE_LOG__FILE="$dir/app.log" \
    CHATGATE_LOG__STDERR=off CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE=1000000 \
    CHATGATE_RATE_LIMIT__ADDRESS_MESSAGES_PER_MINUTE=1000000 \
    CHATGATE_OPENAI__CONTEXT_TOKENS=136 TOKIO_WORKER_THREADS=1 \
        exec env "${routed[@]}" valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$gateway" __gateway \
        >"$dir/gateway.log" 2>&1) &
    gw=$!
    for _ in $(seq 1 300); do
        curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.2
    done
    python3 "$work/drive.py" "$port" "$n" "${RESPONSES:-0}"
    kill -TERM "$gw"
    wait "$gw" || true
    kill "$MOCK_PID" 2>/dev/null || true
    wait "$MOCK_PID" 2>/dev/null || true
    if [ -n "${CG_OUT:-}" ] && [ "$n" -gt 200 ]; then cp "$dir/cg.out" "$CG_OUT"; fi
    # Less the clock's calibration at start-up (quanta's, for the rate
    # limiter): it spins for a stretch of wall time, so its count is not
    # the same in two runs and would not cancel out.
    local total calibration
    total="$(grep -E '^summary:' "$dir/cg.out" | awk '{print $2}')"
    calibration="$(callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$dir/cg.out" 2>/dev/null |
        grep -F 'quanta::Clock as core::default::Default>::default [' | head -n 1 | awk '{gsub(",", "", $1); print $1}')"
    echo $(( total - ${calibration:-0} ))
}

small="$(count 200)"
large="$(count 1200)"
what="/chat/ turn"
[ "${RESPONSES:-}" = 1 ] && what="stored response"
echo "instructions per $what: $(( (large - small) / 1000 ))"
