#!/usr/bin/env bash
# The external load generator: wrk (Debian's package) drives the mock
# upstream directly and chatgate's /chat/ as shipped (built-in defaults:
# SQLite, app.log with every message, reply and SQL statement; only the
# per-session rate limit raised so the bench measures the gateway), one
# after the other, on loopback, so that the figures do not rest on the
# project's own load client alone.
#
# Usage: benches/wrk.sh [seconds=10] [connections=64] [sessions=2000]
# The gateway is target/release/chatgate (built here), or GATEWAY_EXE; the
# mock is the load bench's (`loadtest __mock`). With RESPONSES=1, stored
# responses (`POST /v1/responses` joining the same sessions as
# conversations) run after /chat/, then /chat/ again, and the gateway's CPU
# per response is compared with the mean of the two /chat/ runs (the
# sessions grow meanwhile).
#
# Prints one line per target (requests/s, latency percentiles, max,
# non-2xx, errors, server CPU per request) and the ratio of
# chatgate's throughput to the mock's. Every run is bounded: wrk stops
# after the given seconds, and the script stops both servers it started.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-64}"
sessions="${3:-2000}"

if ! command -v wrk >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --example loadtest --quiet
cargo build --release -p chatgate --quiet
bin="$PWD/target/release/examples/loadtest"
gateway="${GATEWAY_EXE:-$PWD/target/release/chatgate}"
work="$(mktemp -d)"
gw_pid=""
cleanup() {
    [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
    [ -n "${MOCK_PID:-}" ] && kill "$MOCK_PID" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# The mock (`loadtest __mock`) prints its port and serves until stopped.
coproc MOCK { exec "$bin" __mock; }
read -r mock_port <&"${MOCK[0]}"
mock_pid="$MOCK_PID"

gw_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# The shipped binary (or GATEWAY_EXE, another build of it) on its defaults.
(
    cd "$work"
    export CHATGATE_SERVER__BIND="127.0.0.1:$gw_port"
    export CHATGATE_OPENAI__BASE_URL="http://127.0.0.1:$mock_port/v1"
    export CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE=1000000000
    # wrk's connections all come from one loopback address.
    export CHATGATE_RATE_LIMIT__ADDRESS_MESSAGES_PER_MINUTE=1000000000
    export CHATGATE_RATE_LIMIT__SESSIONS_PER_HOUR=1000000000
    exec "$gateway" serve
) &
gw_pid=$!

# Sessions through the gateway, and the request bodies, by python3.
python3 - "$gw_port" "$sessions" "$work" <<'PY'
import json, sys, time, urllib.request
port, n, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
base = f"http://127.0.0.1:{port}"
for _ in range(400):
    try:
        if urllib.request.urlopen(base + "/readyz", timeout=1).status == 200:
            break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit("chatgate did not become ready")
ids = []
for _ in range(n):
    req = urllib.request.Request(base + "/session/initialize_session", method="POST")
    ids.append(json.load(urllib.request.urlopen(req))["session_id"])
history = []
for i in range(5):
    history.append({"role": "user", "content": f"Hello, how are you? #{i}"})
    history.append({"role": "assistant", "content": f"Echo: Hello, how are you? #{i}"})
direct = json.dumps({"model": "gpt-3.5-turbo", "temperature": 0.7,
                     "messages": history + [{"role": "user", "content": "Hello, how are you?"}]})
done = r'''
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT %.0f %.3f %.3f %.3f %.3f %d %d %d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000, e.status,
    e.connect + e.read + e.write + e.timeout, summary.requests))
end
'''
with open(f"{work}/chat.lua", "w") as f:
    f.write("local ids = {" + ",".join(json.dumps(i) for i in ids) + "}\n")
    f.write('''
local n = 0
request = function()
  n = n + 1
  local id = ids[(n % #ids) + 1]
  return wrk.format("POST", "/chat/", {["Content-Type"] = "application/json"},
    '{"session_id":"' .. id .. '","role":"user","content":"Hello, how are you? #' .. n .. '"}')
end
''' + done)
with open(f"{work}/responses.lua", "w") as f:
    convs = ["conv_" + i.replace("-", "") for i in ids]
    f.write("local ids = {" + ",".join(json.dumps(c) for c in convs) + "}\n")
    f.write('''
local n = 0
request = function()
  n = n + 1
  local id = ids[(n % #ids) + 1]
  return wrk.format("POST", "/v1/responses", {["Content-Type"] = "application/json"},
    '{"model":"gpt-3.5-turbo","input":"Hello, how are you? #' .. n .. '","conversation":"' .. id .. '"}')
end
''' + done)
with open(f"{work}/direct.lua", "w") as f:
    f.write("local body = " + json.dumps(direct) + "\n")
    f.write('''
request = function()
  return wrk.format("POST", "/v1/chat/completions", {["Content-Type"] = "application/json"}, body)
end
''' + done)
PY

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"

# One wrk run: the target's line, from the summary the Lua `done` hook
# prints, and the server's CPU (user + system) per request over the run.
run() {
    local name="$1" port="$2" script="$3" pid="$4"
    local before after line
    before="$(cpu_ticks "$pid")"
    line="$(wrk -t2 -c"$conns" -d"${secs}s" --timeout 10s -s "$script" "http://127.0.0.1:$port" | grep '^RESULT')"
    after="$(cpu_ticks "$pid")"
    # RESULT rps p50 p99 p99.9 max non2xx errors requests
    read -r _ rps p50 p99 p999 max non2xx errors requests <<<"$line"
    local cpu_us
    cpu_us="$(awk -v t="$((after - before))" -v hz="$hz" -v n="$requests" 'BEGIN { printf "%.0f", t / hz * 1e6 / (n > 0 ? n : 1) }')"
    printf '%-28s %10s %9s %9s %9s %9s %8s %7s %12s\n' "$name" "$rps" "$p50" "$p99" "$p999" "$max" "$non2xx" "$errors" "$cpu_us"
    echo "$rps" >"$work/$name.rps"
    echo "$cpu_us" >"$work/$name.cpu"
}

echo "wrk: $conns connections, 2 threads, ${secs}s per target, $sessions sessions round-robin; $(nproc) cores"
printf '%-28s %10s %9s %9s %9s %9s %8s %7s %12s\n' "target" "req/s" "p50 ms" "p99 ms" "p99.9 ms" "max ms" "non-2xx" "errors" "CPU µs/req"
run "mock-direct" "$mock_port" "$work/direct.lua" "$mock_pid"
run "chatgate-chat-defaults" "$gw_port" "$work/chat.lua" "$gw_pid"
awk -v g="$(cat "$work/chatgate-chat-defaults.rps")" -v d="$(cat "$work/mock-direct.rps")" \
    'BEGIN { printf "ratio chatgate /chat/ / mock direct: %.3f\n", g / d }'
if [ "${RESPONSES:-}" = 1 ]; then
    run "chatgate-responses" "$gw_port" "$work/responses.lua" "$gw_pid"
    run "chatgate-chat-after" "$gw_port" "$work/chat.lua" "$gw_pid"
    awk -v r="$(cat "$work/chatgate-responses.cpu")" -v a="$(cat "$work/chatgate-chat-defaults.cpu")" \
        -v b="$(cat "$work/chatgate-chat-after.cpu")" \
        'BEGIN { c = (a + b) / 2; printf "stored response vs /chat/ turn, gateway CPU per request: %d vs %.1f µs (%+.1f%%)\n", r, c, (r / c - 1) * 100 }'
fi
