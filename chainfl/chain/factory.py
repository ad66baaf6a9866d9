"""The chain factory: a URL to a :class:`~chainfl.chain.backends.Chain`.

Kept apart from ``backends.py`` so that the base class and its implementations (``embedded.py``,
``rpc.py``) import in one direction only: implementations import the base, this module imports
them all.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from chainfl import config
from chainfl.chain.backends import Chain
from chainfl.chain.embedded import DB_FILE, EthTesterChain
from chainfl.chain.rpc import RpcChain
from chainfl.config import NodeSettings
from chainfl.errors import ChainError, ConfigError

VALID_SCHEMES = ("eth-tester://", "eth-tester://memory", "http://host:port", "https://host:port")


def connect(url: str | None = None, home=None, settings: NodeSettings | None = None, *,
            must_exist: bool = False) -> Chain:
    """Connect to the chain at ``url`` (default: ``config.default_rpc()``).

    ``eth-tester://`` — embedded py-evm persisted under ``<home>/chain`` (``home`` defaults to
    ``config.home_dir()``; ``eth-tester:///abs/dir`` names the directory), one process at a time;
    ``eth-tester://memory`` — embedded, in memory; ``http(s)://host:port`` — a JSON-RPC node.
    ``settings`` default to ``ganache.env``. ``must_exist`` (commands that read a recorded task:
    audit, detect) refuses to create a new, empty embedded chain where none was recorded.
    """
    url = url or config.default_rpc()
    settings = settings or config.load_node_settings()
    parsed = urlparse(url)
    if parsed.scheme == "eth-tester":
        if parsed.netloc == "memory":
            return EthTesterChain(url, settings, directory=None)
        if parsed.netloc:
            raise ConfigError(f"unknown embedded chain {url!r}; use eth-tester:// (persisted under "
                              f"CHAINFL_HOME/chain), eth-tester://memory, or eth-tester:///abs/dir")
        if parsed.path not in ("", "/"):  # eth-tester:///abs/dir: an explicit directory
            directory = Path(parsed.path)
        else:
            directory = Path(home or config.home_dir()) / "chain"
        if must_exist and not (directory / DB_FILE).exists():
            raise ChainError(f"no embedded chain in {directory}: nothing has been recorded there yet. "
                             f"Point --rpc (or CHAINFL_RPC) at the chain that holds the task, or set "
                             f"CHAINFL_HOME to the directory `chainfl run` used")
        return EthTesterChain(url, settings, directory=directory)
    if parsed.scheme in ("http", "https"):
        return RpcChain(url, settings)
    raise ConfigError(f"unknown chain URL {url!r}; valid forms: {', '.join(VALID_SCHEMES)}")
