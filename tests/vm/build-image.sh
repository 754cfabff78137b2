#!/usr/bin/env bash
# Builds (or reuses) the Debian 12 guest image of the VM test tier from the Debian archive
# only (mmdebstrap, the machine's own apt sources for bookworm). Output, cached by a hash of
# everything that goes into it (this script, tests/vm/guest/, the kernel flavour):
#   $CACHE/<hash>/{disk.qcow2,vmlinuz,initrd.img,kernel.txt}
# Usage: build-image.sh [stock|backports]   prints the image directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kernel=${1:-stock}
cache=${CORDON_VM_CACHE:-/var/cache/cordon-vm}
mirror=${CORDON_VM_MIRROR:-http://deb.debian.org/debian}
case "$kernel" in
  stock) suites="bookworm"; kpkg="linux-image-amd64" ;;
  backports) suites="bookworm bookworm-backports"; kpkg="linux-image-amd64/bookworm-backports" ;;
  *) echo "build-image: kernel flavour must be stock or backports, not $kernel" >&2; exit 2 ;;
esac
# Guest packages: systemd and the tools the scenarios use; python3 runs the probe and
# responder programs (and the agent's venv); socat/iputils for manual replays.
pkgs="systemd,systemd-sysv,udev,dbus,kmod,initramfs-tools,nftables,python3,python3-venv,iproute2,iputils-ping,procps,socat,ca-certificates,logrotate"
key=$( { echo "$kernel $suites $kpkg $pkgs $mirror"; cat "$0"; (cd "$here/guest" && for f in $(ls); do echo "== $f"; cat "$f"; done); } | sha256sum | cut -c1-16)
out="$cache/$kernel-$key"
if [ -s "$out/disk.qcow2" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
  echo "build-image: cached $out" >&2
  echo "$out"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build-$kernel-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s)
echo "build-image: mmdebstrap $kernel ($suites) into $tmp" >&2
sources=""
for s in $suites; do sources+="deb $mirror $s main"$'\n'; done
mmdebstrap --variant=apt --include="$pkgs" \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"; echo MODULES=list > "$1/etc/initramfs-tools/conf.d/cordon-vm.conf"; printf "%s\n" virtio_pci virtio_blk virtio_net virtio_console ext4 9p 9pnet_virtio > "$1/etc/initramfs-tools/modules"' \
  --customize-hook="chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $kpkg" \
  --customize-hook='echo cordon-guest > "$1/etc/hostname"; printf "/dev/vda / ext4 rw,errors=remount-ro 0 1\n" > "$1/etc/fstab"' \
  --customize-hook="install -m 0755 '$here/guest/vm-shell' \"\$1/usr/local/sbin/vm-shell\"" \
  --customize-hook="install -m 0644 '$here/guest/vm-shell.service' \"\$1/etc/systemd/system/vm-shell.service\"" \
  --customize-hook="install -D -m 0644 '$here/guest/10-lab.network' \"\$1/etc/systemd/network/10-lab.network\"" \
  --customize-hook='chroot "$1" systemctl enable vm-shell.service systemd-networkd.service' \
  --customize-hook='chroot "$1" systemctl mask serial-getty@hvc0.service getty@tty1.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer' \
  --customize-hook='chroot "$1" passwd -d root >/dev/null' \
  --customize-hook='rm -rf "$1/var/cache/apt/archives/"*.deb "$1/var/lib/apt/lists/"*_Packages' \
  --customize-hook="cp -L \"\$1/vmlinuz\" \"\$1/initrd.img\" '$tmp/' && chroot \"\$1\" sh -c 'ls /lib/modules' > '$tmp/kernel.txt'" \
  bookworm "$tmp/root" "$sources" >&2
t1=$(date +%s)
mkfs.ext4 -q -F -L cordon-root -d "$tmp/root" "$tmp/disk.raw" 3G >&2  # it says "Creating regular file" on stdout
qemu-img convert -O qcow2 "$tmp/disk.raw" "$tmp/disk.qcow2" >&2
rm -f "$tmp/disk.raw"
rm -rf "$tmp/root"
mkdir -p "$out"
mv "$tmp/disk.qcow2" "$tmp/vmlinuz" "$tmp/initrd.img" "$tmp/kernel.txt" "$out/"
echo "build-image: built $out in $(( $(date +%s) - t0 ))s (mmdebstrap $((t1 - t0))s), kernel $(cat "$out/kernel.txt")" >&2
echo "$out"
