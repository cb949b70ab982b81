#!/usr/bin/env bash
# Installs what flashgate's commands need, from Debian's packages, when it is
# missing and we are root. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail

_apt_updated=0
apt_install() {
  # apt_install <command-to-check> <package>...
  local cmd=$1; shift
  if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
  apt_get_install "$@"
}

apt_get_install() {
  # apt_get_install <package>...: unconditionally (root only)
  if [ "$(id -u)" != "0" ]; then
    echo "flashgate: install the Debian package(s) $* (or run this as root)" >&2
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

# The deployment checks (tests/it/observability_files.rs, tests/it/deploy.rs) run
# Prometheus's promtool, the Kubernetes schema validator and systemd-analyze.
# promtool comes out of Debian's prometheus package unpacked into target/tools,
# not installed: installing it would also start a Prometheus server.
ensure_promtool() {
  if command -v promtool >/dev/null 2>&1; then return 0; fi
  local dir=$PWD/target/tools/prometheus
  if [ ! -x "$dir/usr/bin/promtool" ]; then
    if [ "$_apt_updated" = 0 ] && [ "$(id -u)" = "0" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
      _apt_updated=1
    fi
    echo "flashgate: unpacking promtool from Debian's prometheus package into $dir" >&2
    local tmp; tmp=$(mktemp -d)
    chmod a+rwx "$tmp"  # apt downloads as its _apt user
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$dir"
    rm -rf "$tmp"
  fi
  export PATH="$dir/usr/bin:$PATH"
}

# kubernetes-validate (PyPI), into a virtualenv under target/tools unless the
# python3 on PATH already has it (Debian's python3 refuses system-wide pip).
ensure_kubernetes_validate() {
  if python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then return 0; fi
  local venv=$PWD/target/tools/venv
  if [ ! -x "$venv/bin/python3" ] || ! "$venv/bin/python3" -c 'import kubernetes_validate' >/dev/null 2>&1; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      apt_get_install python3-venv
    fi
    echo "flashgate: installing kubernetes-validate from PyPI into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check kubernetes-validate
  fi
  export PATH="$venv/bin:$PATH"
}

ensure_deploy_tools() {
  ensure_promtool
  ensure_kubernetes_validate
  apt_install systemd-analyze systemd
}

# schemathesis (PyPI), which fuzzes a live instance from openapi.yaml
# (tests/it/openapi.rs): pinned, in its own virtualenv under target/tools (its
# dependencies stay apart from kubernetes-validate's). Exports
# FLASHGATE_SCHEMATHESIS, the command the test runs.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  local venv=$PWD/target/tools/schemathesis
  local st=$venv/bin/schemathesis
  if ! "$st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      apt_get_install python3-venv
    fi
    echo "flashgate: installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" || {
      echo "flashgate: pip could not install schemathesis==$SCHEMATHESIS_VERSION (PyPI reachable?)" >&2
      return 1
    }
  fi
  export FLASHGATE_SCHEMATHESIS=$st
}
