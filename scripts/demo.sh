#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the lab demo: a throwaway network of namespaces,
# the real agent isolating the endpoint, and reachability tables at every step.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m tests.harness demo "$@"
