#!/usr/bin/env bash
# Set up everything the test suite needs and run it: the Python package with test extras in
# ./.venv, the pinned node tools (solcjs, Ganache, Anvil, js-ipfs) in ./node_modules. The tests
# start Ganache, Anvil and the IPFS daemon themselves (tests/conftest.py) and stop them at the end.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/storage -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
