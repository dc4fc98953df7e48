#!/usr/bin/env bash
# Installs what `make test` and `make demo` need, idempotently.
# Safe to run as root on a fresh Debian machine; a quick no-op when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, checked by a file each one installs.
declare -A APT=(
  [/usr/bin/socat]=socat
  [/usr/bin/openssl]=openssl
  [/usr/bin/swtpm]=swtpm
  [/usr/bin/swtpm_setup]=swtpm-tools
  [/usr/bin/tpm2_readpublic]=tpm2-tools
  [/usr/bin/qemu-system-aarch64]=qemu-system-arm
  [/usr/bin/qemu-aarch64-static]=qemu-user-static
  [/usr/bin/mosquitto_pub]=mosquitto-clients
  [/usr/sbin/mkfs.ext4]=e2fsprogs
  [/usr/bin/cpio]=cpio
  [/usr/bin/node]=nodejs
  [/usr/bin/npm]=npm
  [/usr/bin/lintian]=lintian
  [/usr/bin/mmdebstrap]=mmdebstrap
  [/usr/bin/arch-test]=arch-test
  [/usr/sbin/debugfs]=e2fsprogs
  [/usr/bin/softhsm2-util]=softhsm2
  [/usr/bin/chromium]=chromium
)

need=()
for f in "${!APT[@]}"; do
  # node and npm may come from elsewhere on the PATH; accept those.
  case "$f" in */node|*/npm) command -v "$(basename "$f")" >/dev/null 2>&1 && continue ;; esac
  [ -e "$f" ] || need+=("${APT[$f]}")
done
# PostgreSQL's server programs live under a versioned directory; the ledger
# tests start their own server with them (enroll/station/ca/pgtest).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  echo "deps: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# qemu-user for foreign-architecture chroots (mmdebstrap of the arm64 Debian
# board): binfmt_misc is not mounted on a fresh machine. The F flag (in
# qemu-user-static's conf) opens the interpreter once, so it works inside
# the chroot too.
if [ -d /proc/sys/fs/binfmt_misc ] && [ "$(id -u)" -eq 0 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  for a in aarch64 arm; do
    conf=/usr/lib/binfmt.d/qemu-$a.conf
    if [ -f "$conf" ] && [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$a" ]; then
      cat "$conf" > /proc/sys/fs/binfmt_misc/register
    fi
  done
fi

# Go modules (and the packaging tools' own module graph).
go mod download
go mod download -modfile=agent/dist/tools.mod

# npm packages for the official-SDK conformance tests, pinned by package-lock.json.
for dir in simulator/conformance/node; do
  if [ -f "$dir/package.json" ] && [ ! -d "$dir/node_modules" ]; then
    echo "deps: npm install in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error 2>/dev/null || npm install --no-audit --no-fund --loglevel=error)
  fi
done
