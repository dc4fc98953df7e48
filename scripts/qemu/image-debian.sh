#!/usr/bin/env bash
# Builds the systemd board: an arm64 Debian 12 root filesystem from Debian's
# packages (mmdebstrap), with the devid-agent .deb installed by dpkg -i and a
# config that points at the simulator (docs/qemu-board.md, "Debian board").
#
#   scripts/qemu/image-debian.sh            (make image-debian)
#
# The slow part, the base root filesystem, is cached OUTSIDE the work tree in
# $DEVID_QEMU_CACHE (default /var/cache/devid-qemu)/<key>/base.tar, keyed by
# the suite, architecture and package list: a second run, or a second CI run
# on the same machine, reuses it. Everything after it takes seconds:
#   .build/qemu/debian/rootfs/   the board's root tree (the harness makes the disk from it)
#   .build/qemu/debian/image.env kernel, initramfs, rootfs, package versions
#   .build/qemu/debian/upgrade/  a devid-agent .deb with a higher version (upgrade scenario)
# It needs root (chroot, file owners), qemu-user binfmt (scripts/deps.sh)
# and the arm64 kernel of scripts/qemu/image.sh, which it runs first.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
Q=$ROOT/.build/qemu
OUT=$Q/debian
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The board's packages beyond Essential. systemd is PID 1; udev applies the
# package's rules; dbus for systemctl/journalctl as on a product; socat lets
# the harness talk to the local API socket.
PACKAGES=systemd,systemd-sysv,udev,dbus,socat
CACHE=${DEVID_QEMU_CACHE:-/var/cache/devid-qemu}
t0=$EPOCHREALTIME
step() { printf 'image-debian +%5.1fs %s\n' "$(awk "BEGIN{print $EPOCHREALTIME - $t0}")" "$*"; }

main() {
  [ "$(id -u)" -eq 0 ] || { echo "image-debian: needs root (chroot, file owners)" >&2; exit 1; }
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "image-debian: qemu-aarch64 binfmt not registered; run scripts/deps.sh" >&2; exit 1; }
  scripts/qemu/image.sh arm64 >/dev/null
  # shellcheck disable=SC1091
  . "$Q/arm64/image.env"

  # 1. The cached base: Essential + PACKAGES, nothing of ours.
  local key base
  key=$(printf '%s\n' "recipe=2" "$SUITE" arm64 "$PACKAGES" "$MIRROR" | sha256sum | cut -c1-16)
  base=$CACHE/$key/base.tar
  if [ -f "$base" ]; then
    step "base rootfs: cached $base"
  else
    step "base rootfs: mmdebstrap $SUITE arm64 ($PACKAGES) -> $base (cold: minutes)"
    mkdir -p "$CACHE/$key"
    local tmp=$CACHE/$key/base.tmp.tar
    mmdebstrap --quiet --arch=arm64 --variant=essential --include="$PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/devid-*' \
      --customize-hook='rm -f "$1"/etc/machine-id; touch "$1"/etc/machine-id' \
      "$SUITE" "$tmp" "$MIRROR"
    mv "$tmp" "$base"
    printf '%s\n' "$PACKAGES" > "$CACHE/$key/packages"
    step "base rootfs cached ($(du -h "$base" | cut -f1))"
  fi

  # 2. Our packages: the one under test (arm64) and a higher version of it.
  local version
  version=$(cat agent/dist/VERSION)
  step "devid-agent .deb (arm64 $version) and the upgrade package ($version+upgrade1)"
  mkdir -p "$OUT"
  rm -rf "$OUT/pkg" "$OUT/upgrade"
  CGO_ENABLED=0 GOOS=linux GOARCH=arm64 go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$OUT/bin/linux-arm64/" ./agent/cmd/devid-agent
  CGO_ENABLED=0 GOOS=linux GOARCH=arm64 go build -trimpath -ldflags '-s -w' -o "$OUT/devid-board" ./scripts/qemu/boardinit
  make --no-print-directory .build/tools/nfpm >/dev/null
  go run ./agent/dist/cmd/distgen package -nfpm .build/tools/nfpm -bin "$OUT/bin" -out "$OUT/pkg" \
    -arch arm64 -only devid-agent -images=false -sums=false -version "$version" >/dev/null
  go run ./agent/dist/cmd/distgen package -nfpm .build/tools/nfpm -bin "$OUT/bin" -out "$OUT/upgrade" \
    -arch arm64 -only devid-agent -images=false -sums=false -version "$version+upgrade1" >/dev/null
  rm -rf "$OUT/pkg/gen" "$OUT/upgrade/gen"

  # 3. The board's tree: the base, dpkg -i, the board files and the config.
  rootfs=$OUT/rootfs
  step "root tree: extract base, dpkg -i devid-agent"
  rm -rf "$rootfs"; mkdir -p "$rootfs"
  tar -C "$rootfs" -xpf "$base"
  cp "$OUT"/pkg/devid-agent_*_arm64.deb "$rootfs/tmp/"
  # As an image builder's chroot step does: /proc mounted for the
  # maintainer scripts (systemd-tmpfiles needs it).
  mount -t proc proc "$rootfs/proc"
  trap 'umount "$OUT/rootfs/proc" 2>/dev/null || true' EXIT
  chroot "$rootfs" dpkg -i /tmp/"$(basename "$OUT"/pkg/devid-agent_*_arm64.deb)" >"$OUT/dpkg.log" 2>&1 ||
    { cat "$OUT/dpkg.log"; exit 1; }
  umount "$rootfs/proc"
  rm -f "$rootfs"/tmp/*.deb
  board_files "$rootfs"

  cat > "$OUT/image.env" <<ENV
BOARD_ARCH=arm64
KERNEL_VERSION=$KERNEL_VERSION
KERNEL=$KERNEL
INITRD=$INITRD
ROOTFS=$rootfs
BASE=$base
PACKAGE=$(ls "$OUT"/pkg/devid-agent_*_arm64.deb)
UPGRADE_PACKAGE=$(ls "$OUT"/upgrade/devid-agent_*_arm64.deb)
ENV
  step "done: $rootfs (devid-agent $(chroot "$rootfs" dpkg-query -W -f '${Version}' devid-agent))"
}

# board_files adds what the board (not the package) provides: the vTPM
# bridge and the harness's control channel as services, mounts, and the
# config an image builder writes for the simulator.
board_files() {
  local r=$1
  install -m 0755 "$OUT/devid-board" "$r/usr/local/sbin/devid-board"
  echo devid-board > "$r/etc/hostname"
  cat > "$r/etc/fstab" <<'EOF'
/dev/vda  /      ext4  defaults,noatime          0 1
/dev/vdb  /data  ext4  defaults,noatime,nofail   0 2
EOF
  mkdir -p "$r/data"
  # Debian's arm64 kernel has no TPM TIS driver: the board's TPM is swtpm
  # on the host, bridged into a vtpm_proxy device by this service, early.
  cat > "$r/etc/systemd/system/devid-vtpm.service" <<'EOF'
[Unit]
Description=Board TPM (host swtpm over virtio-serial, bridged to /dev/tpmrm0)
DefaultDependencies=no
Before=sysinit.target
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=notify
ExecStart=/usr/local/sbin/devid-board vtpm swtpm

[Install]
WantedBy=sysinit.target
EOF
  cat > "$r/etc/systemd/system/devid-board-ctl.service" <<'EOF'
[Unit]
Description=Harness control channel (test board only; virtio-serial devid.ctl)
DefaultDependencies=no
After=systemd-journald.socket

[Service]
ExecStart=/usr/local/sbin/devid-board ctl devid.ctl

[Install]
WantedBy=sysinit.target
EOF
  mkdir -p "$r/etc/systemd/system/devid-agent.service.d"
  cat > "$r/etc/systemd/system/devid-agent.service.d/board.conf" <<'EOF'
# The test board's own drop-in: the agent needs the bridged TPM, and a
# shorter watchdog than the shipped 60 s keeps the watchdog scenario short
# (same mechanism: WATCHDOG=1 from the state loop, SIGABRT, SIGKILL, restart).
[Unit]
Wants=devid-vtpm.service
After=devid-vtpm.service
[Service]
WatchdogSec=20s
EOF
  mkdir -p "$r/etc/systemd/system/sysinit.target.wants"
  for u in devid-vtpm.service devid-board-ctl.service; do
    ln -sf "/etc/systemd/system/$u" "$r/etc/systemd/system/sysinit.target.wants/$u"
  done
  # The serial console is for the harness's log only.
  ln -sf /dev/null "$r/etc/systemd/system/serial-getty@ttyAMA0.service"
  ln -sf /dev/null "$r/etc/systemd/system/getty@tty1.service"
  # The config the image builder writes: the simulator's DPS and hub names
  # (devid-sim's defaults) at the addresses slirp forwards, the board's TPM
  # and factory UART. The harness puts the per-run trust anchors beside it.
  cat > "$r/etc/devid/config.toml" <<'EOF'
# devid-agent on the QEMU Debian board (scripts/qemu/image-debian.sh).
[key]
backend = "tpm:/dev/tpmrm0"

[factory]
port = "/dev/ttyS0"
root = "/etc/devid/factory-root.pem"

[dps]
endpoint = "localhost:8883"
id_scope = "0ne0000SIM1"
trust_bundle = "/etc/devid/service-root.pem"

[network.resolve]
"localhost" = "10.0.2.100:8883"
"sim-hub-1.azure-devices.net" = "10.0.2.101:8883"
EOF
  chmod 0640 "$r/etc/devid/config.toml"
  chroot "$r" chgrp devid /etc/devid/config.toml
}

main "$@"
