#!/usr/bin/env bash
# The README's test command (`make test`) and CI's: the whole pytest suite in the project env.
#   scripts/run_tests.sh                 # everything
#   scripts/run_tests.sh test/test_x.py  # a subset (any pytest arguments)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec scripts/with_env.sh python -m pytest "$@"
