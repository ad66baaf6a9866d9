"""A small world for agent tests: an embedded chain, a registry, a store, nodes with data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification

from chainfl.agents.coordinator import Coordinator
from chainfl.agents.node import LocalData, NodeAgent
from chainfl.agents.reports import MemoryReportBox
from chainfl.agents.setup import build_spec
from chainfl.chain import connect
from chainfl.chain.registry import Registry
from chainfl.storage import open_store

FEATURES = tuple(f"f{i}" for i in range(6))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # tiny models: torch's thread pool only slows them down on a shared 2-core machine
    torch.set_num_threads(1)


TEST_ROWS = 1000


def node_datasets(n_nodes: int, rows: int = 900, seed: int = 0):
    """Per-node LocalData over ``rows`` rows, and a test set (X, y) from the same distribution."""
    X, y = make_classification(n_samples=rows + TEST_ROWS, n_features=len(FEATURES), n_informative=4,
                               weights=[0.8], class_sep=1.5, random_state=seed)
    X = (X * 10).astype(np.float32)            # larger values, like chain amounts (signed log1p scales them)
    parts = np.array_split(np.random.default_rng(seed).permutation(rows), n_nodes)
    datas = [LocalData.split(X[p], y[p], FEATURES, seed=i) for i, p in enumerate(parts)]
    return datas, (X[rows:], y[rows:])


@dataclass
class World:
    chain: object
    registry: Registry
    store: object
    box: MemoryReportBox
    datas: list
    accounts: list
    coordinator_account: object
    test: tuple = ()

    def spec(self, mode: str, rounds: int = 2, **kw):
        return build_spec(mode=mode, nodes=[a.address for a in self.accounts], rounds=rounds,
                          stats=[d.stats(with_grid=kw.get("model_kind") == "newton") for d in self.datas],
                          hidden=(8,), epochs=1, batch_size=32,
                          seed=3, **kw)

    def coordinator(self, **kw) -> Coordinator:
        return Coordinator(self.registry, self.store, self.coordinator_account, reports=self.box, **kw)

    def agent(self, i: int, task_id: int, cls=NodeAgent, **kw) -> NodeAgent:
        kw.setdefault("reports", self.box)
        return cls(self.registry, self.store, self.accounts[i], task_id, self.datas[i], **kw)

    def drive(self, coordinator: Coordinator, agents, max_steps: int = 200) -> None:
        """Step the coordinator and every agent in a fixed order until the task is closed."""
        for _ in range(max_steps):
            if coordinator.step() == "done":
                return
            for a in agents:
                a.step()
        raise AssertionError("the task did not finish")

    def events(self, task_id: int, name: str) -> list:
        return [e.args for e in self.registry.events(0, None, task_id=task_id, names=[name])]


def make_world(tmp_path, n: int = 3, rows: int = 900, chain_url: str = "eth-tester://memory",
               store_url: str | None = None) -> World:
    """``n`` nodes (dev accounts 1..n) on a fresh registry; the embedded chain and store unless
    ``chain_url`` / ``store_url`` name real daemons (Anvil, the IPFS daemon)."""
    chain = connect(chain_url)
    registry = Registry.deploy(chain, chain.accounts[0])
    store = open_store(store_url or (tmp_path / "store").as_uri())
    datas, test = node_datasets(n, rows)
    return World(chain, registry, store, MemoryReportBox(), datas, [chain.account(i + 1) for i in range(n)],
                 chain.accounts[0], test)


@pytest.fixture
def world(tmp_path):
    w = make_world(tmp_path)
    yield w
    w.chain.close()


@pytest.fixture
def world5(tmp_path):
    w = make_world(tmp_path, 5, rows=1500)
    yield w
    w.chain.close()


# the backends tests/conftest.py runs (same variables); each chain once, Anvil with the IPFS daemon
CHAIN_BACKENDS = [b.strip() for b in os.environ.get("CHAINFL_TEST_CHAINS", "eth-tester,ganache,anvil").split(",")
                  if b.strip()]
STORE_BACKENDS = [b.strip() for b in os.environ.get("CHAINFL_TEST_STORES", "file,ipfs").split(",") if b.strip()]
PAIRS = [(c, "ipfs" if c == "anvil" and "ipfs" in STORE_BACKENDS else "file") for c in CHAIN_BACKENDS]


@pytest.fixture(params=PAIRS, ids=[f"{c}+{s}" for c, s in PAIRS])
def backend_world(request, tmp_path):
    """A 3-node world on each backend pair: the embedded chain, Ganache, Anvil (with the IPFS daemon)."""
    chain, store = request.param
    chain_url = "eth-tester://memory" if chain == "eth-tester" else request.getfixturevalue(f"{chain}_url")
    w = make_world(tmp_path, chain_url=chain_url,
                   store_url=request.getfixturevalue("ipfs_url") if store == "ipfs" else None)
    yield w
    w.chain.close()
