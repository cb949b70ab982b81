#!/usr/bin/env bash
# Installs what flashgate's commands need, from Debian's packages, when it is
# missing and we are root. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail

_apt_updated=0
apt_install() {
  # apt_install <command-to-check> <package>...
  local cmd=$1; shift
  if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" != "0" ]; then
    echo "flashgate: '$cmd' is missing; install the Debian package(s) $* (or run this as root)" >&2
    return 1
  fi
  if [ "$_apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    _apt_updated=1
  fi
  echo "flashgate: installing $* with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_redis() {
  apt_install redis-server redis-server
  apt_install redis-cli redis-tools
}

# PostgreSQL for the ledger tests: the server binaries (initdb, pg_ctl) live
# off PATH in /usr/lib/postgresql/<major>/bin; tests find them there and run
# them as the postgres user when we are root (PostgreSQL refuses root).
ensure_postgres() {
  if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" != "0" ]; then
    echo "flashgate: PostgreSQL server binaries are missing; install the Debian package postgresql (or run this as root)" >&2
    return 1
  fi
  if [ "$_apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    _apt_updated=1
  fi
  echo "flashgate: installing postgresql with apt-get" >&2
  # the package's own cluster is not needed: tests initdb their own
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "flashgate: cargo (Rust >= 1.89) is required" >&2
    return 1
  fi
}
