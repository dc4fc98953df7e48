#!/usr/bin/env bash
# Builds the emulated board's image: Debian's kernel plus an initramfs whose
# /init is scripts/qemu/boardinit and which carries devid-agent.
#
#   scripts/qemu/image.sh [arm64|armv7]     (default arm64; also: BOARD_ARCH=...)
#
# Outputs in .build/qemu/<arch>/: vmlinuz, initrd.cpio.gz, image.env.
# Downloads are cached in .build/qemu/ (a private apt state, so the host's
# dpkg architectures are left alone); with a warm cache this takes seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCH=${1:-${BOARD_ARCH:-arm64}}
ROOT=$PWD
Q=$ROOT/.build/qemu
case "$ARCH" in
  arm64) DEBARCH=arm64; META=linux-image-arm64; GOARCH=arm64; GOARM= ;;
  armv7) DEBARCH=armhf; META=linux-image-armmp; GOARCH=arm; GOARM=7 ;;
  *) echo "image.sh: unknown board arch '$ARCH' (want arm64 or armv7)" >&2; exit 2 ;;
esac
OUT=$Q/$ARCH
mkdir -p "$Q/debs" "$OUT" "$Q/bin"
t0=$EPOCHREALTIME
step() { printf 'image[%s] +%5.1fs %s\n' "$ARCH" "$(awk "BEGIN{print $EPOCHREALTIME - $t0}")" "$*"; }

# A private apt state for the target architecture: apt-get download of a
# foreign-arch package without dpkg --add-architecture on the host.
APTDIR=$Q/apt-$DEBARCH
APT_OPTS=(-q -o APT::Architecture=$DEBARCH -o APT::Architectures::=$DEBARCH
  -o Dir::State::Lists=$APTDIR/lists -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
  -o Dir::Cache::archives=$APTDIR/archives -o Debug::NoLocking=1 -o APT::Sandbox::User=root
  -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
  -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
  -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false)

# 1. The kernel package: whatever the meta package resolves to today (the
#    archive keeps only the current ABI). A cached .deb is reused as is.
DEB=$(ls "$Q"/debs/linux-image-*_"$DEBARCH".deb 2>/dev/null | grep -v -- "$META"_ | sort -V | tail -1 || true)
if [ -z "$DEB" ] || [ -n "${IMAGE_REFRESH:-}" ]; then
  step "apt-get update ($DEBARCH lists, private state in $APTDIR)"
  mkdir -p "$APTDIR/lists/partial" "$APTDIR/archives/partial"
  # Mirrors are sometimes mid-sync; retry, then go on with whatever indexes
  # did arrive (the resolve below fails clearly if none did).
  for try in 1 2; do
    if apt-get "${APT_OPTS[@]}" update >"$APTDIR/update.log" 2>&1; then break; fi
    echo "image.sh: apt-get update incomplete (try $try):"; grep -E '^E:' "$APTDIR/update.log" | head -2
    sleep 2
  done
  PKG=$(apt-cache "${APT_OPTS[@]}" depends "$META" | awk '/Depends: linux-image-/{print $2; exit}')
  PKG=${PKG%:$DEBARCH}
  [ -n "$PKG" ] || { echo "image.sh: cannot resolve $META for $DEBARCH" >&2; exit 1; }
  step "apt-get download $PKG"
  for try in 1 2 3; do
    (cd "$Q/debs" && apt-get "${APT_OPTS[@]}" download "$PKG" >/dev/null) && break
    [ "$try" = 3 ] && { echo "image.sh: apt-get download $PKG failed" >&2; exit 1; }
    sleep $((try * 2))
  done
  DEB=$(ls "$Q"/debs/"$PKG"_*_"$DEBARCH".deb | sort -V | tail -1)
fi
KDIR=$Q/kernel-$(basename "$DEB" .deb)
if [ ! -f "$KDIR/.extracted" ]; then
  step "extract $(basename "$DEB")"
  rm -rf "$KDIR"; mkdir -p "$KDIR"
  dpkg-deb -x "$DEB" "$KDIR"
  touch "$KDIR/.extracted"
fi
KVER=$(ls "$KDIR/lib/modules" | head -1)
VMLINUZ=$KDIR/boot/vmlinuz-$KVER

# 2. Go binaries: the board init and the agent for the target, mkimage for the host.
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
step "go build boardinit + devid-agent ($GOARCH${GOARM:+ v$GOARM}) and mkimage"
export CGO_ENABLED=0
GOOS=linux GOARCH=$GOARCH GOARM=$GOARM go build -trimpath -buildvcs=false -ldflags '-s -w' -o "$OUT/init" ./scripts/qemu/boardinit &
GOOS=linux GOARCH=$GOARCH GOARM=$GOARM go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=$VERSION" -o "$OUT/devid-agent" ./agent/cmd/devid-agent &
go build -trimpath -buildvcs=false -o "$Q/bin/mkimage" ./scripts/qemu/mkimage &
for j in $(jobs -p); do wait "$j"; done

# 3. The initramfs. Modules not listed come in as dependencies.
MODULES=virtio_pci,virtio_net,virtio_console,virtio_blk,tpm_vtpm_proxy,crc32c_generic,ext4
# The USB stack, loaded by init only on a board booted with devid.usb=1
# (its probing costs about half a second of boot under emulation):
# xhci_pci and ftdi_sio for the factory port on a USB serial adapter
# (scripts/qemu/harness/usb.go); dummy_hcd, libcomposite, usb_f_acm and
# cdc_acm for the board's own USB device port as a gadget, with the host it
# is plugged into on the same virtual bus (the usb-gadget scenario, arm64
# only); nothing binds until the agent makes a gadget.
USB_MODULES=xhci_pci,ftdi_sio
[ "$ARCH" = arm64 ] && USB_MODULES=$USB_MODULES,dummy_hcd,libcomposite,usb_f_acm,cdc_acm
step "initramfs"
"$Q/bin/mkimage" -modroot "$KDIR/lib/modules/$KVER" -modules "$MODULES" -usb-modules "$USB_MODULES" -init "$OUT/init" \
  -file "$OUT/devid-agent=/bin/devid-agent" -o "$OUT/initrd.cpio.gz"
cp -f "$VMLINUZ" "$OUT/vmlinuz"
cat > "$OUT/image.env" <<ENV
BOARD_ARCH=$ARCH
KERNEL_PACKAGE=$(basename "$DEB")
KERNEL_VERSION=$KVER
KERNEL=$OUT/vmlinuz
INITRD=$OUT/initrd.cpio.gz
ENV
step "done: $OUT/vmlinuz ($KVER), $OUT/initrd.cpio.gz"
