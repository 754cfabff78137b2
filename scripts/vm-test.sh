#!/usr/bin/env bash
# The VM test tier (DESIGN §9): builds or reuses the cached Debian 12 guest image
# (tests/vm/build-image.sh, from the Debian archive only), boots it under QEMU with the
# agent installed, and runs the story of tests/vm/scenarios.py with real packets from peers
# in network namespaces. Ends with `N passed, M failed`; exits non-zero on any failure.
# Usage (as root): bash scripts/vm-test.sh [stock|backports] [--html FILE] [--until STEP]
#   --html FILE   also write the run as one self-contained HTML page (grids, timeline, timings)
#   --until STEP  stop the story after STEP (install isolate tamper reboot stop kill9 watchdog
#                 upgrade release purge; default: all)
set -euo pipefail
kernel=stock
run_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    stock|backports) kernel=$1 ;;
    --html) [ $# -ge 2 ] || { echo "vm-test: --html needs a FILE" >&2; exit 2; }
            run_args+=(--html "$(realpath -m -- "$2")"); shift ;;
    --until) [ $# -ge 2 ] || { echo "vm-test: --until needs a STEP" >&2; exit 2; }
             run_args+=(--until "$2"); shift ;;
    *) echo "vm-test: unknown argument $1 (usage: vm-test.sh [stock|backports] [--html FILE] [--until STEP])" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "vm-test: run as root (namespaces, tap devices, QEMU), e.g. sudo bash $0" >&2
  exit 1
fi
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
.venv/bin/python -m tests.vm.run "$image" --kernel "$kernel" "${run_args[@]}"
rc=$?
set -e
exit "$rc"
