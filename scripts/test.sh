#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: unit tests, and the
# integration tests that send real packets between network namespaces (root only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
before=$(ip netns list | sort)
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests: that is a failure, not a pass" >&2
  rc=1
fi
after=$(ip netns list | sort)
if [ "$before" != "$after" ]; then
  echo "test: network namespaces left behind: $(comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' ')" >&2
  rc=1
fi
if nft list tables 2>/dev/null | grep -q cordon; then
  echo "test: a cordon table is in the machine's own network namespace" >&2
  rc=1
fi
exit "$rc"
