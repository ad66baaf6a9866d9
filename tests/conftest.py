"""Shared fixtures: the real backends every backend-generic suite runs against.

Which backends run is explicit, never silently skipped:

    CHAINFL_TEST_CHAINS   comma list of eth-tester, ganache, anvil     [all three]
    CHAINFL_TEST_STORES   comma list of file, ipfs                     [both]

Ganache, Anvil and the js-ipfs daemon are started once per test session from ./node_modules
(``scripts/setup-tools.sh``) on test-only ports, and stopped at the end. A listed backend that
cannot start fails the tests that need it, with the reason. To run quickly without node tools:
``CHAINFL_TEST_CHAINS=eth-tester CHAINFL_TEST_STORES=file pytest``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from chainfl import config

CHAIN_BACKENDS = [b.strip() for b in os.environ.get("CHAINFL_TEST_CHAINS", "eth-tester,ganache,anvil").split(",") if b.strip()]
STORE_BACKENDS = [b.strip() for b in os.environ.get("CHAINFL_TEST_STORES", "file,ipfs").split(",") if b.strip()]



def _free_port() -> int:
    """A port nothing listens on now, so concurrent test sessions (and a developer's own
    `chainfl chain up` on 8545/8546) never collide. CHAINFL_TEST_<NAME>_PORT overrides it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _test_port(name: str) -> int:
    value = os.environ.get(f"CHAINFL_TEST_{name.upper()}_PORT")
    return int(value) if value else _free_port()


@pytest.fixture(scope="session")
def node_settings():
    return config.load_node_settings()


def _start_local_node(kind: str, settings, tmp_path_factory):
    from chainfl.chain.nodes import LocalNode

    node = LocalNode(kind, settings=settings, port=_test_port(kind),
                     log_dir=tmp_path_factory.mktemp(f"{kind}-log"))
    node.start(timeout=60)
    return node


@pytest.fixture(scope="session")
def ganache_url(node_settings, tmp_path_factory):
    node = _start_local_node("ganache", node_settings, tmp_path_factory)
    yield node.url
    node.stop()


@pytest.fixture(scope="session")
def anvil_url(node_settings, tmp_path_factory):
    node = _start_local_node("anvil", node_settings, tmp_path_factory)
    yield node.url
    node.stop()


@pytest.fixture(scope="session")
def ipfs_url(tmp_path_factory):
    from chainfl.storage.daemon import IpfsDaemon

    daemon = IpfsDaemon(repo_dir=tmp_path_factory.mktemp("ipfs-repo"), api_port=_test_port("ipfs"))
    daemon.start(timeout=90)
    yield daemon.url
    daemon.stop()


@pytest.fixture(params=CHAIN_BACKENDS)
def chain_url(request):
    """URL of each configured chain backend in turn (eth-tester is a fresh in-memory chain)."""
    if request.param == "eth-tester":
        return "eth-tester://memory"
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request, tmp_path):
    """URL of each configured store backend in turn (the embedded store in a fresh directory)."""
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    return request.getfixturevalue("ipfs_url")


@pytest.fixture
def chainfl_home(tmp_path, monkeypatch):
    """An isolated CHAINFL_HOME for tests that use the defaults."""
    home = tmp_path / "home"
    monkeypatch.setenv("CHAINFL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """../shared/data; tests that need it are skipped, saying so, when it is absent."""
    path = config.data_dir() / "eth_fraud" / "transaction_dataset.csv"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set CHAINFL_DATA_DIR); this test needs it")
    return config.data_dir()
