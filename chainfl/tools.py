"""Locate the node-based tools installed by the project's own ``package.json``.

``scripts/setup-tools.sh`` runs ``npm ci`` in the repository root; binaries then live in
``node_modules/.bin``. ``CHAINFL_NODE_MODULES`` points elsewhere if needed. Nothing is assumed
to be on PATH, and nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from chainfl.config import REPO_ROOT
from chainfl.errors import ToolNotFoundError

#: tool name -> executable in node_modules/.bin
TOOLS = {"solcjs": "solcjs", "ganache": "ganache", "anvil": "anvil", "jsipfs": "jsipfs"}


def node_modules() -> Path:
    value = os.environ.get("CHAINFL_NODE_MODULES")
    return Path(value) if value else REPO_ROOT / "node_modules"


def find_tool(name: str) -> Path:
    """Return the path of a node-based tool or raise :class:`ToolNotFoundError` saying how to install it."""
    if name not in TOOLS:
        raise ToolNotFoundError(f"unknown tool {name!r}; known: {', '.join(TOOLS)}")
    candidate = node_modules() / ".bin" / TOOLS[name]
    if candidate.exists():
        return candidate
    on_path = shutil.which(TOOLS[name])
    if on_path and os.environ.get("CHAINFL_ALLOW_PATH_TOOLS"):
        return Path(on_path)
    raise ToolNotFoundError(
        f"{name} is not installed (looked for {candidate}). Run `scripts/setup-tools.sh` in the "
        f"repository root (npm ci with the pinned versions in package.json), or set "
        f"CHAINFL_NODE_MODULES to a node_modules directory that has it."
    )
