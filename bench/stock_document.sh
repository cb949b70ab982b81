#!/usr/bin/env bash
# The stock document under a poll storm (issue 23): wrk against GET /healthz
# and GET /v1/skus/{sku} at 4 and 64 shards in the same run, and the Redis
# commands per GET (INFO commandstats delta over each wrk run).
#
#   make bench-stock-doc                       # release build, 10 s per run, 64 connections
#   STOCK_CACHE_MS=0 make bench-stock-doc      # the live document, for comparison
#
# Starts its own redis-server and flashgate on free 127.0.0.1 ports (temp
# dir, no persistence) and stops both at the end. Needs wrk, redis-server,
# redis-cli. Variables: FLASHGATE_BIN, SECONDS_PER_RUN, CONNECTIONS,
# WRK_THREADS, STOCK_CACHE_MS, SHARD_COUNTS, SWEEP_INTERVAL_MS (200, the
# default; the sweeper and promoter visit every shard of every SKU that
# often, and their commands count too: a long interval isolates the GETs').
set -euo pipefail

BIN=${FLASHGATE_BIN:-target/release/flashgate}
SECS=${SECONDS_PER_RUN:-10}
CONNS=${CONNECTIONS:-64}
THREADS=${WRK_THREADS:-2}
CACHE_MS=${STOCK_CACHE_MS:-500}
SHARD_COUNTS=${SHARD_COUNTS:-"4 64"}

for tool in wrk redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "needs $tool on the PATH (apt-get install -y wrk redis-server)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p flashgate" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d)
RPORT=$(free_port)
HPORT=$(free_port)
cleanup() {
  [ -n "${FG_PID:-}" ] && kill "$FG_PID" 2>/dev/null || true
  [ -n "${R_PID:-}" ] && kill "$R_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" \
  >"$DIR/redis.log" 2>&1 &
R_PID=$!
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

export FLASHGATE_REDIS_URL="redis://127.0.0.1:$RPORT"
FLASHGATE_CLIENT_RATE_PER_SECOND=0 FLASHGATE_GLOBAL_RATE_PER_SECOND=0 \
FLASHGATE_STOCK_CACHE_MS=$CACHE_MS FLASHGATE_SWEEP_INTERVAL_MS=${SWEEP_INTERVAL_MS:-200} \
  "$BIN" serve --listen "127.0.0.1:$HPORT" --insecure-no-auth >"$DIR/flashgate.log" 2>&1 &
FG_PID=$!
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$HPORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done

for k in $SHARD_COUNTS; do
  "$BIN" preload --sku "doc$k" --stock 100000 --shards "$k" >/dev/null
done

calls() { redis-cli -p "$RPORT" INFO commandstats | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" {n += $3} END {print n+0}'; }
rate() { awk '/Requests\/sec/ {print $2}'; }
latency() { awk '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {print p50, p99}'; }

run() { # name path -> "rate p50 p99 commands requests"
  local before after out
  before=$(calls)
  out=$(wrk -t "$THREADS" -c "$CONNS" -d "${SECS}s" --latency "http://127.0.0.1:$HPORT$2")
  after=$(calls)
  local reqs
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$1 $(echo "$out" | rate) $(echo "$out" | latency) $((after - before)) $reqs"
}

echo "flashgate $("$BIN" --version 2>/dev/null || true); stock_cache_ms=$CACHE_MS; wrk -t$THREADS -c$CONNS -d${SECS}s; $(nproc) cores"
# the background tasks' own rate (the sweeper and the promoter visit every
# shard of every SKU), subtracted for the net figure
idle0=$(calls); sleep 5; idle1=$(calls)
BG=$(awk -v a="$idle0" -v b="$idle1" 'BEGIN {print (b - a) / 5}')
results=()
results+=("$(run healthz /healthz)")
for k in $SHARD_COUNTS; do
  # one GET first: the snapshot's first read is not part of the storm
  curl -sf "http://127.0.0.1:$HPORT/v1/skus/doc$k" >/dev/null
  results+=("$(run "sku_${k}sh" "/v1/skus/doc$k")")
done
results+=("$(run healthz /healthz)")
printf '%-12s %10s %9s %9s %10s %12s %14s %14s\n' route "req/s" "p50" "p99" "vs healthz" "redis cmds" "cmds/request" "net of bg"
hz=$(printf '%s\n' "${results[@]}" | awk '$1 == "healthz" {s += $2; n++} END {print s / n}')
for r in "${results[@]}"; do
  set -- $r
  awk -v n="$1" -v r="$2" -v p50="$3" -v p99="$4" -v c="$5" -v q="$6" -v hz="$hz" -v bg="$BG" -v secs="$SECS" \
    'BEGIN {net = c - bg * secs; if (net < 0) net = 0;
            printf "%-12s %10.0f %9s %9s %10.2f %12d %14.5f %14.5f\n", n, r, p50, p99, r / hz, c, c / q, net / q}'
done
echo "(vs healthz: over the mean of the two /healthz runs around the document's;"
echo " background: $BG Redis commands/s measured idle over 5 s, subtracted in 'net of bg')"
