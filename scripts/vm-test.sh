#!/usr/bin/env bash
# The VM test tier (DESIGN §9): builds or reuses the cached Debian 12 guest image
# (tests/vm/build-image.sh, from the Debian archive only), boots it under QEMU with the
# agent installed, and runs the story of tests/vm/scenarios.py with real packets from peers
# in network namespaces. Ends with `N passed, M failed`; exits non-zero on any failure.
# Usage: sudo bash scripts/vm-test.sh [stock|backports]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "vm-test: run as root (namespaces, tap devices, QEMU): sudo $0" >&2
  exit 1
fi
kernel=${1:-stock}
need=()
for tool in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mmdebstrap:mmdebstrap tcpdump:tcpdump mkfs.ext4:e2fsprogs dpkg-deb:dpkg; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
t0=$(date +%s)
image=$(bash tests/vm/build-image.sh "$kernel")
echo "vm-test: image $image ready in $(( $(date +%s) - t0 ))s"
set +e
.venv/bin/python -m tests.vm.run "$image" --kernel "$kernel"
rc=$?
set -e
exit "$rc"
