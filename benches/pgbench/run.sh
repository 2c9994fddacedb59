#!/usr/bin/env bash
# PostgreSQL's CPU per turn for a turn's claim and append, one statement
# each per turn (16 clients), then one statement each per batch of N turns
# (16/N clients, two at least), on the gateway's statements. Usage:
#   benches/pgbench/run.sh [seconds=8] [postgres URL]
# Makes (and drops first) a schema `pgb` in that database; needs pgbench and
# psql. The server's CPU is this machine's busy time (/proc/stat) less
# pgbench's own, so run it on an otherwise idle machine with the server local.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-8}
url=${2:-${CHATGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}}
psql -q "$url" -f schema.sql >/dev/null 2>&1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; psql -q "$url" -c "DROP SCHEMA IF EXISTS pgb CASCADE" >/dev/null 2>&1' EXIT
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
run() { # turns-per-transaction clients script
  local b0 b1
  b0=$(busy)
  /usr/bin/time -f "PGBCPU %U %S" pgbench -n -M prepared -T "$secs" -c "$2" -f "$3" "$url" > "$tmp/out" 2>&1
  b1=$(busy)
  python3 - "$1" "$b0" "$b1" "$(getconf CLK_TCK)" "$secs" "$tmp/out" <<'PY'
import re, sys
per, b0, b1, hz, secs = (int(a) for a in sys.argv[1:6])
out = open(sys.argv[6]).read()
tx = int(re.search(r"actually processed: (\d+)", out).group(1))
u, s = map(float, re.search(r"PGBCPU ([\d.]+) ([\d.]+)", out).groups())
turns = tx * per
cpu = ((b1 - b0) / hz - u - s) / turns * 1e6
print(f"{per:3d} turns per statement: {turns / secs:8.0f} turns/s, server CPU {cpu:6.1f} µs per turn")
PY
}
run 1 16 turn1.sql
for n in 4 8 16 32; do
  sed -e "s/@N@/$n/g" -e "s/@N1@/$((n - 1))/g" -e "s/@LAST@/$((1000 / n - 1))/g" turns.sql.in > "$tmp/turns$n.sql"
  run "$n" $(( n >= 16 ? 2 : 16 / n )) "$tmp/turns$n.sql"
done
