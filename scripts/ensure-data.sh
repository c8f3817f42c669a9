#!/usr/bin/env bash
# Make Fashion-MNIST available offline. Order: already there? -> Debian's package -> explain.
# Never downloads from the internet: that is an explicit choice (python -m qlib.data --download).
set -uo pipefail
PY=${1:-python3}

if "$PY" -m qlib.data >/dev/null 2>&1; then
  "$PY" -m qlib.data | sed 's/^/==> data: /'
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  fi
  if [ "$SUDO" != none ]; then
    echo "==> data: installing Debian's dataset-fashion-mnist package"
    if ! $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then
      echo "==> data: apt-get update (the package lists are missing or stale)"
      $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
    fi
  fi
fi

if "$PY" -m qlib.data | sed 's/^/==> data: /'; then
  exit 0
fi
echo "==> data: Fashion-MNIST is still missing; see the message above for the three ways to get it." >&2
exit 1
