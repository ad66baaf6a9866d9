"""Two Anvil processes that hold the same blocks: one archive, one ordinary (``--prune-history``).

Both start from the same genesis time, so the same transactions sent to both (e.g. the same
simulation) give the same blocks — block hashes included. The pruned one keeps only the latest
state, as an ordinary (non-archive) node does: a read at a past block fails there.
"""

from __future__ import annotations

import os

from chainfl import config
from chainfl.chain.nodes import LocalNode

GENESIS = "1700000000"
#: The chain backends this test run uses (the same variable and default as tests/conftest.py).
CHAIN_BACKENDS = [b.strip() for b in os.environ.get("CHAINFL_TEST_CHAINS", "eth-tester,ganache,anvil").split(",")
                  if b.strip()]
NEEDS_ANVIL = "needs Anvil (listed in CHAINFL_TEST_CHAINS) for a --prune-history node"


def start_twins(log_root, name: str) -> tuple[LocalNode, LocalNode]:
    """Start ``(archive, pruned)`` on free ports, logs under ``log_root``; the caller stops both."""
    settings = config.load_node_settings()
    archive = LocalNode("anvil", settings, port=0, log_dir=log_root / f"{name}-archive",
                        extra_args=("--timestamp", GENESIS))
    pruned = LocalNode("anvil", settings, port=0, log_dir=log_root / f"{name}-pruned",
                       extra_args=("--timestamp", GENESIS, "--prune-history"))
    archive.start(timeout=60)
    try:
        pruned.start(timeout=60)
    except BaseException:
        archive.stop()
        raise
    return archive, pruned
