#!/usr/bin/env bash
# Quick start, command 2: the whole test suite. Tests start their own
# redis-server (and PostgreSQL) processes on free ports in temp dirs; this installs what they
# need first (and schemathesis, which tests/it/openapi.rs runs). Extra arguments go to the test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_rust
ensure_redis
ensure_postgres
ensure_deploy_tools
ensure_schemathesis

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
