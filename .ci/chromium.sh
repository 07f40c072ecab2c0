#!/usr/bin/env bash
# Best effort: install Debian's headless-capable `chromium` when no Chromium / Chrome is on PATH (tests/test_report.py
# renders the HTML report in it; without one that test is skipped with the reason). Installs only where apt-get can
# run (root, or sudo without a password); otherwise says so and exits 0. Nothing else needs a browser.
set -uo pipefail
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" >/dev/null 2>&1; then exit 0; fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "chromium: not installed and no root to install it; the report's browser test will be skipped" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed and no apt-get here; the report's browser test will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
  echo "chromium: installed ($(dpkg-query -W -f='${Version}' chromium 2>/dev/null))"
else
  echo "chromium: apt-get could not install it; the report's browser test will be skipped" >&2
fi
exit 0
