#!/usr/bin/env bash
# Installs what `make test` and `make demo` need, idempotently.
# Safe to run as root on a fresh Debian machine; a no-op when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: command -> package.
declare -A APT=(
  [socat]=socat
  [openssl]=openssl
)

need=()
for cmd in "${!APT[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("${APT[$cmd]}")
done
if ((${#need[@]})); then
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Go modules.
go mod download
