#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: unit tests, and the
# integration tests that send real packets between network namespaces (root only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Every namespace the run creates is noted here (tests/harness/netns.add): on a shared
# machine other people's namespaces come and go, so "left behind" means one of ours.
export CORDON_NETNS_LOG
CORDON_NETNS_LOG=$(mktemp /tmp/cordon-netns.XXXXXX)
trap 'rm -f "$CORDON_NETNS_LOG"' EXIT
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests: that is a failure, not a pass" >&2
  rc=1
fi
left=$(comm -12 <(sort -u "$CORDON_NETNS_LOG") <(ip netns list | awk '{print $1}' | sort -u))
if [ -n "$left" ]; then
  echo "test: network namespaces this run created are still there: $(echo $left)" >&2
  rc=1
fi
if nft list tables 2>/dev/null | grep -q cordon; then
  echo "test: a cordon table is in the machine's own network namespace" >&2
  rc=1
fi
exit "$rc"
