#!/usr/bin/env bash
# Runs Debian's lintian on each .deb given (make lintian, make package).
# Fails on any error or warning; info tags are printed but pass. Overrides
# ship inside each package (/usr/share/lintian/overrides/PKG), generated
# from agent/dist/manifest.toml with a reason for each
# (agent/dist/deb/PKG.lintian-overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

main() {
  command -v lintian >/dev/null || { echo "lintian: not installed; run scripts/deps.sh" >&2; exit 1; }
  [ $# -gt 0 ] || { echo "usage: scripts/lintian.sh PKG.deb..." >&2; exit 2; }
  local rc=0 out deb pkg n
  for deb in "$@"; do
    pkg=$(basename "$deb"); pkg=${pkg%%_*}
    n=$(grep -c "^$pkg: " "agent/dist/deb/$pkg.lintian-overrides" 2>/dev/null || true)
    # --allow-root: CI runs as root. Overridden tags do not count (and
    # --show-overrides would make them count for --fail-on).
    if out=$(lintian --allow-root --fail-on error,warning "$deb" 2>&1); then
      echo "lintian: PASS $(basename "$deb") ($(count E "$out") errors, $(count W "$out") warnings, $(count I "$out") info, $n overrides with reasons)"
    else
      echo "lintian: FAIL $(basename "$deb")"
      rc=1
    fi
    [ -z "$out" ] || sed 's/^/  /' <<<"$out"
  done
  return $rc
}

count() { grep -c "^$1:" <<<"$2" || true; }

main "$@"
