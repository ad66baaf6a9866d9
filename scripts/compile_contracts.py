#!/usr/bin/env python
"""Compile contracts/*.sol with the pinned solcjs and write chainfl/chain/artifacts/ChainflRegistry.json.

Usage: .venv/bin/python scripts/compile_contracts.py [--check]

--check compiles and exits 1 if the committed artifact differs (bytecode, ABI or source hash).
Needs node_modules (scripts/setup-tools.sh) and Debian's z3 (see ../shared/TOOLCHAIN.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from chainfl.chain.compile import ARTIFACT_PATH, compile_registry, write_artifact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed artifact")
    args = parser.parse_args()
    start = time.perf_counter()
    artifact = compile_registry()
    took = time.perf_counter() - start
    if args.check:
        committed = json.loads(ARTIFACT_PATH.read_text()) if ARTIFACT_PATH.exists() else {}
        keys = ("abi", "bytecode", "deployedBytecode", "sourcesSha256", "settings")
        stale = [k for k in keys if committed.get(k) != artifact[k]]
        if stale:
            print(f"{ARTIFACT_PATH} is stale ({', '.join(stale)} differ); run scripts/compile_contracts.py",
                  file=sys.stderr)
            return 1
        print(f"artifact up to date ({took:.1f} s)")
        return 0
    path = write_artifact(artifact)
    size = (len(artifact["deployedBytecode"]) - 2) // 2
    print(f"wrote {path} ({artifact['compiler']['version']}, runtime {size} bytes, {took:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
