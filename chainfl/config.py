"""Settings shared by every subsystem: where things live and which backends are the default.

Each setting has an environment variable, so the CLI, tests and benchmarks agree without
passing flags everywhere:

    CHAINFL_HOME        data directory (embedded chain, store, deployments, runs)  [./.chainfl]
    CHAINFL_RPC         chain URL: ``eth-tester://`` (embedded, default) or ``http://host:port``
    CHAINFL_STORE       store URL: ``file://<dir>`` (embedded, default) or ``ipfs://host:port``
    CHAINFL_DATA_DIR    real labelled data                                         [../shared/data]
    CHAINFL_NODE_ENV    local node settings file                                   [./ganache.env]
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from chainfl.errors import ConfigError

#: The repository root (where pyproject.toml, ganache.env and node_modules live) when chainfl
#: runs from a checkout; for an installed wheel the current directory is used instead.
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def home_dir() -> Path:
    """The data directory: embedded chain state, embedded store, deployments, run directories."""
    return _env_path("CHAINFL_HOME", Path.cwd() / ".chainfl")


def writable_dir(path: Path | str, what: str = "directory") -> Path:
    """``path`` as an existing, writable directory (created if missing); ConfigError naming the
    problem and the fix otherwise (CHAINFL_HOME below a file, a read-only disk, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".chainfl-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write the {what} {path} ({e.strerror or e}); set CHAINFL_HOME to a writable "
                          f"directory (now {home_dir()}) or pass another location") from e
    return path


def default_rpc() -> str:
    return os.environ.get("CHAINFL_RPC", "eth-tester://")


def default_store() -> str:
    return os.environ.get("CHAINFL_STORE", (home_dir() / "store").as_uri())


def data_dir() -> Path:
    """Real labelled data (read in place, never copied into the repo)."""
    return _env_path("CHAINFL_DATA_DIR", REPO_ROOT.parent / "shared" / "data")


def node_env_path() -> Path:
    default = REPO_ROOT / "ganache.env"
    if not default.exists():
        default = Path.cwd() / "ganache.env"
    return _env_path("CHAINFL_NODE_ENV", default)


@dataclass(frozen=True)
class NodeSettings:
    """Settings of the local development node, read from ``ganache.env``."""

    host: str = "127.0.0.1"          # interface the node listens on
    port: int = 8545                 # JSON-RPC port of Ganache (and of Anvil when alone)
    anvil_port: int = 8546           # Anvil's port when both run side by side
    chain_id: int = 1337             # chain id reported by the node (eth-tester always uses 131277322940537)
    mnemonic: str = "test test test test test test test test test test test junk"
    account_count: int = 60          # accounts derived from the mnemonic and funded at genesis
    account_balance_eth: int = 1_000_000
    block_time: int = 0              # seconds between blocks, 0 = instant mining
    gas_limit: int = 30_000_000

    def url(self, node: str = "ganache") -> str:
        port = self.anvil_port if node == "anvil" else self.port
        return f"http://{self.host}:{port}"


_KEYS = {
    "CHAIN_HOST": ("host", str),
    "CHAIN_PORT": ("port", int),
    "ANVIL_PORT": ("anvil_port", int),
    "CHAIN_ID": ("chain_id", int),
    "MNEMONIC": ("mnemonic", str),
    "ACCOUNT_COUNT": ("account_count", int),
    "ACCOUNT_BALANCE_ETH": ("account_balance_eth", int),
    "BLOCK_TIME": ("block_time", int),
    "GAS_LIMIT": ("gas_limit", int),
}


def load_node_settings(path: Path | None = None) -> NodeSettings:
    """Parse ``ganache.env`` (``KEY=value`` lines, ``#`` comments, shell-style quoting)."""
    path = Path(path) if path else node_env_path()
    if not path.exists():
        return NodeSettings()
    values: dict[str, object] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(f"{path}:{lineno}: expected KEY=value, got {raw!r}")
        key, _, value = line.partition("=")
        key = key.strip()
        if key not in _KEYS:
            raise ConfigError(f"{path}:{lineno}: unknown setting {key!r}; known: {', '.join(_KEYS)}")
        field, kind = _KEYS[key]
        parts = shlex.split(value, comments=True)
        text = " ".join(parts)
        try:
            values[field] = kind(text)
        except ValueError as e:
            raise ConfigError(f"{path}:{lineno}: {key} must be {kind.__name__}, got {text!r}") from e
    return NodeSettings(**values)
