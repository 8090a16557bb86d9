#!/usr/bin/env bash
# Idempotent set-up of a Debian 12 machine for Wrenn: system packages, the virtualenv, the base image.
# Each step is skipped when already done; the slow ones are cached.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

PACKAGES=(runsc debootstrap qemu-system-x86 qemu-utils iproute2 nftables iptables socat tini e2fsprogs
          busybox-static lz4 gcc libc6-dev make dpkg-dev autoconf automake libnss-myhostname postgresql-15
          redis-server ca-certificates curl)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# *.localhost must resolve to loopback so the SDK's get_url() works on this machine.
if ! grep -qE '^hosts:.*myhostname' /etc/nsswitch.conf; then
  sed -i -E 's/^(hosts:.*)$/\1 myhostname/' /etc/nsswitch.conf
fi

# The SDK needs Python >= 3.13; the server runs on >= 3.11. One virtualenv with the newest we have.
PY=""
if command -v pyenv >/dev/null && [ -x "$(pyenv prefix 3.13.0 2>/dev/null)/bin/python3.13" ]; then
  PY="$(pyenv prefix 3.13.0)/bin/python3.13"
fi
for cand in python3.13 python3.12 python3.11 python3; do
  [ -n "$PY" ] && break
  command -v "$cand" >/dev/null && PY="$(command -v "$cand")"
done
stamp=".venv/.wrenn-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)-$("$PY" -c 'import sys;print(sys.version_info[:2])')"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "creating the virtualenv with $PY"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  if .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then
    .venv/bin/pip install -q 'wrenn==0.3.0'
  fi
  echo "$want" > "$stamp"
fi

say "base image"
WRENN_DIR="${WRENN_DIR:-/var/lib/wrenn}" .venv/bin/wrenn image build
