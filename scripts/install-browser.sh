#!/usr/bin/env bash
# `make browser`: Debian's chromium for the playground's browser tests (tests/service/browser, `make browser-test`).
# Playwright for Python (the dev extra) drives that binary; no browser build is ever downloaded by a tool.
# Where chromium cannot be installed (no apt-get, no root or sudo), it says so and exits 0: the browser tests
# then skip with that reason, unless REQUIRE_BROWSER=1 (CI), where this fails instead.
set -euo pipefail

say() { printf 'browser: %s\n' "$*" >&2; }
give_up() {
  if [ "${REQUIRE_BROWSER:-0}" = 1 ]; then
    say "$*, and REQUIRE_BROWSER=1 needs it"
    exit 1
  fi
  say "$*: the browser tests will skip (install chromium, or set CHROMIUM to a Chromium binary)"
  exit 0
}

for name in "${CHROMIUM:-}" chromium chromium-browser; do
  if [ -n "$name" ] && command -v "$name" >/dev/null 2>&1; then
    say "$("$name" --version 2>/dev/null || echo "$name") is installed"
    exit 0
  fi
done
command -v apt-get >/dev/null 2>&1 || give_up "no chromium, and no apt-get to install Debian's"
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  give_up "no chromium, and installing it needs root (sudo apt-get install chromium)"
fi
say "installing Debian's chromium (apt-get)"
"${sudo[@]}" apt-get update -qq || give_up "apt-get update failed"
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null \
  || give_up "apt-get install chromium failed"
say "$(chromium --version)"
