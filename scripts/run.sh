#!/usr/bin/env bash
# Quick start, command 1: run flashgate against a local Redis (127.0.0.1:6379,
# started here if none answers) with a demo SKU `demo-tee` (100 units over 4
# shards) ready to try. Extra arguments go to `flashgate serve`.
# Without FLASHGATE_API_KEYS set, it serves WITHOUT authentication
# (--insecure-no-auth): a local demo, not a deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_rust
ensure_redis

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "flashgate: starting a local redis-server on 127.0.0.1:6379" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
    --dir /tmp --logfile /tmp/flashgate-redis.log
  for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

cargo build --release --quiet -p flashgate
./target/release/flashgate preload --sku demo-tee --stock 100 --shards 4 --if-absent
echo "flashgate: try  curl -s localhost:8080/v1/skus/demo-tee  (README: quick start)" >&2
# signed holds (docs/signed-holds.md): a demo key, made once, unless one is set
if [ -z "${FLASHGATE_SIGNING_KEY_FILE:-}" ]; then
  [ -f target/demo-signing-key.pem ] ||
    ./target/release/flashgate gen-signing-key --out target/demo-signing-key.pem >/dev/null
  export FLASHGATE_SIGNING_KEY_FILE=$PWD/target/demo-signing-key.pem
  echo "flashgate: holds signed with the demo key target/demo-signing-key.pem (GET /.well-known/jwks.json)" >&2
fi
if [ -z "${FLASHGATE_API_KEYS:-}${FLASHGATE_ADMIN_KEYS:-}" ]; then
  echo "flashgate: no API keys set: serving without authentication (local demo)" >&2
  set -- --insecure-no-auth "$@"
fi
exec ./target/release/flashgate serve "$@"
