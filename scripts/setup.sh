#!/usr/bin/env bash
# Set up chainfl in ./.venv: torch by exact version first (a CPU wheel on these machines; a
# looser pin pulls a multi-GB CUDA build), then the package. `--test` adds the test extras and the
# node-based tools (solcjs, Ganache, Anvil, js-ipfs) that the test suite starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
  scripts/setup-tools.sh
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -m pip check
