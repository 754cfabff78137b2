#!/usr/bin/env bash
# Installs everything Cordon's demo and tests need on a fresh Debian machine (as root):
# the kernel-facing tools from Debian, and a virtualenv in .venv with the package + test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (network namespaces and nftables need it): sudo $0" >&2
  exit 1
fi

need_apt=()
# The .deb (packaging/deb/build.sh) and its tests (a Debian root file system from mmdebstrap);
# chromium: the HTML report tests load the pages in a real headless browser.
# nats-server: the console channel's broker in the lab; ping: the netdev path tests.
for tool in nft:nftables ip:iproute2 iperf3:iperf3 conntrack:conntrack dh:debhelper \
            dpkg-buildpackage:dpkg-dev mmdebstrap:mmdebstrap chromium:chromium \
            nats-server:nats-server ping:iputils-ping; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# pip's own chatter goes to a log, shown only if a step fails.
log=.venv-setup.log
step() {  # step "what" cmd...: one line per step; the log on failure
  if ! "${@:2}" >>"$log" 2>&1; then
    echo "setup: FAILED: $1 (output of the failing step follows, full log in $log)" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
: >"$log"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  step "create .venv" python3 -m venv .venv
fi
stamp=.venv/.cordon-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Cordon and its test extras into .venv"
  step "upgrade pip" .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  step "install .[test]" .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" >"$stamp"
fi
echo "setup: ready ($(.venv/bin/python --version), $(nft --version))"
