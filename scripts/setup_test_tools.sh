#!/usr/bin/env bash
# Tools the provisioning tests need beyond the venv: promtool (Debian `prometheus`),
# systemd-analyze (Debian `systemd`) and ansible-lint (PyPI). Skips what is already there.
# Usage: scripts/setup_test_tools.sh [VENV_PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=${1:-.venv/bin/python}
say() { printf '[setup-test-tools] %s\n' "$*" >&2; }

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! [ -x "$(dirname "$VPY")/ansible-lint" ]; then
  say "pip install ansible-lint"
  "$VPY" -m pip install -q ansible-lint
fi
say "done"
