#!/usr/bin/env bash
# Make Debian's Chromium available for the browser tests (tests/test_browser.py).
# Order: already there? -> apt-get install chromium (apt-get update once if the lists are stale)
# -> explain. Never fails `make`: without Chromium the browser tests report themselves as xfail
# with this reason, they are not skipped silently.
set -uo pipefail
BROWSER=${QLIB_CHROMIUM:-/usr/bin/chromium}

if [ -x "$BROWSER" ]; then
  echo "==> browser: $("$BROWSER" --version 2>/dev/null || echo "$BROWSER")"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "==> browser: $BROWSER is missing and there is no apt-get here: install Chromium with your" \
       "system's package manager and set QLIB_CHROMIUM to its path; the browser tests xfail until then." >&2
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "==> browser: $BROWSER is missing and installing it needs root: run" \
         "'sudo apt-get install -y chromium'; the browser tests xfail until then." >&2
    exit 0
  fi
fi

echo "==> browser: installing Debian's chromium package (the first time takes a minute)"
if ! $SUDO apt-get install -y -q chromium >/dev/null 2>&1; then
  echo "==> browser: apt-get update (the package lists are missing or stale)"
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null
fi

if [ -x "$BROWSER" ]; then
  echo "==> browser: $("$BROWSER" --version 2>/dev/null || echo "$BROWSER")"
else
  echo "==> browser: apt-get could not install chromium; the browser tests xfail until it is there." >&2
fi
exit 0
