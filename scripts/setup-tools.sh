#!/usr/bin/env bash
# Install the pinned node-based tools from package.json / package-lock.json into ./node_modules:
# solc (solcjs), ganache, @foundry-rs/anvil (ships the binary), ipfs (js-ipfs daemon).
# z3 from Debian keeps solcjs from printing an "SMT solvers" line before its JSON (TOOLCHAIN.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v z3 >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libz3; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq z3 libz3-dev) >/dev/null 2>&1 || echo "warning: could not install z3" >&2
  else
    echo "warning: z3 is not installed; recompiling the contract may fail (running chainfl does not need it)" >&2
  fi
fi
if [ -f package-lock.json ] && [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  echo "node tools up to date"
else
  npm ci --no-audit --no-fund --loglevel=error
fi
for t in solcjs ganache anvil jsipfs; do
  [ -x "node_modules/.bin/$t" ] || { echo "error: node_modules/.bin/$t missing after npm ci" >&2; exit 1; }
done
