"""The simulator on every chain backend: real transactions, features from chain == from ledger."""

from __future__ import annotations

import numpy as np
import pytest

from chainfl.chain import connect
from chainfl.data import extract_features
from chainfl.data.features import FeatureResult
from chainfl.data.simplan import SimConfig, make_plan
from chainfl.data.simulator import Simulation, sign_dynamic_fee_tx, simulate
from chainfl.errors import ChainError, DataError

CONFIG = SimConfig(n_accounts=40, seed=101, days=2)


@pytest.fixture
def simulated(chain_url):
    """A 30-account simulation (every typology) on a chain of each backend.

    Session nodes (Ganache, Anvil) are shared by every test: a fresh seed per use keeps the
    simulated accounts fresh, and a high dev account as funder keeps out of other tests' way.
    """
    global _SEED
    _SEED += 1
    with connect(chain_url) as chain:
        sim = simulate(chain, funder=chain.accounts[-1],
                       config=SimConfig(n_accounts=30, seed=_SEED, days=1.5), progress=False)
        yield chain, sim


_SEED = 9_000 + __import__("os").getpid() % 1000 * 10


def test_simulation_lands_and_chain_features_equal_ledger_features(simulated, tmp_path):
    """One simulation per backend (they are slow on eth-tester), several properties of it."""
    chain, sim = simulated
    plan = make_plan(sim.config)
    assert len(sim.ledger) == plan.n_txs
    assert sim.to_block >= sim.ledger[-1].block >= sim.ledger[0].block == sim.from_block
    # read back in two passes (resumable), compare with features computed from the ledger alone
    middle = (sim.from_block + sim.to_block) // 2
    first = extract_features(chain.w3, sim.from_block, middle, progress=False)
    both = extract_features(chain.w3, None, sim.to_block, state=first.state, progress=False)
    from_chain = both.dataset(sim.labels)
    from_ledger = sim.dataset()
    assert from_chain.ids == from_ledger.ids
    assert set(from_chain.ids) == set(sim.labels)                 # every simulated account transacted
    np.testing.assert_array_equal(from_chain.X, from_ledger.X)
    np.testing.assert_array_equal(from_chain.y, [sim.labels[a] for a in from_chain.ids])
    # block timestamps are the planned ones
    offsets = sorted({t.timestamp - sim.start_time for t in sim.ledger})
    assert offsets == [b.offset for b in plan.blocks]
    # the ledger alone gives the features, no chain needed
    assert isinstance(sim.ledger_features(), FeatureResult)
    assert sim.ledger_features().state.next_block == sim.to_block + 1
    # saved beside the chain data and loaded back
    loaded = Simulation.load(sim.save(tmp_path / "sim"))
    assert loaded.labels == sim.labels and loaded.typology == sim.typology
    assert loaded.ledger == sim.ledger and loaded.config == sim.config
    assert (loaded.from_block, loaded.to_block, loaded.funder) == (sim.from_block, sim.to_block, sim.funder)
    assert (tmp_path / "sim" / "labels.csv").read_text().startswith("address,label,true_label,typology")
    with pytest.raises(DataError, match="not a saved simulation"):
        Simulation.load(tmp_path / "nothing")
    # the same seed again on this chain is refused
    with pytest.raises(ChainError, match="already sent transactions"):
        simulate(chain, config=sim.config, progress=False)


def test_funder_without_enough_ether_is_refused():
    from eth_account import Account

    with connect("eth-tester://memory") as chain:
        poor = Account.from_key(b"\x07" * 32)
        with pytest.raises(ChainError, match="needs"):
            simulate(chain, funder=poor, config=CONFIG, progress=False)


def test_bare_web3_is_refused():
    from web3 import EthereumTesterProvider, Web3

    from chainfl.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a chainfl Chain"):
        simulate(Web3(EthereumTesterProvider()), config=CONFIG)


def test_fast_signer_matches_eth_account():
    from eth_account import Account

    key = bytes(range(1, 33))
    tx = {"to": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "value": 12345, "gas": 21000,
          "maxFeePerGas": 4 * 10**9, "maxPriorityFeePerGas": 10**9, "nonce": 9, "chainId": 31337}
    assert sign_dynamic_fee_tx(key, 31337, 9, 10**9, 4 * 10**9, 21000, tx["to"], 12345) == \
        bytes(Account.from_key(key).sign_transaction(tx).raw_transaction)
    create = {k: v for k, v in tx.items() if k != "to"} | {"data": b"\x60\x00", "gas": 80000}
    assert sign_dynamic_fee_tx(key, 31337, 9, 10**9, 4 * 10**9, 80000, None, 12345, b"\x60\x00") == \
        bytes(Account.from_key(key).sign_transaction(create).raw_transaction)
