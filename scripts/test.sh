#!/usr/bin/env bash
# The whole test suite: lint and types, then every test (real sandboxes, real databases, the real SDK), then
# every bench in quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "the tests start real sandboxes (network namespaces, runsc) and need root" >&2
  exit 1
fi
.venv/bin/ruff check wrenn_server tests bench
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -q "$@"
code=$?
set -e
# pytest exits 5 when nothing was collected: that is a broken suite, not a pass.
if [ "$code" = 5 ]; then echo "no tests ran" >&2; exit 1; fi
# The whole suite (no arguments) ends with every bench in quick mode, a few samples each: a bench that no longer
# runs fails the run.
if [ "$#" = 0 ]; then
  echo "benches, quick mode (python -m bench.run --quick)..." >&2
  if ! .venv/bin/python -m bench.run --quick; then
    echo "a bench failed (its traceback is above)" >&2
    exit 1
  fi
fi
exit "$code"
