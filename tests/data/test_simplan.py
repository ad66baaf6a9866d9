"""The simulator's pure plan: deterministic, complete, affordable, well-formed."""

from __future__ import annotations

from collections import defaultdict

import pytest

from chainfl.data.features import contract_address
from chainfl.data.simplan import (ANOMALOUS_ROLES, FUNDER, GWEI, NORMAL_ROLES, SimConfig, account_key,
                                  make_plan)
from chainfl.errors import ConfigError


@pytest.fixture(scope="module")
def plan():
    return make_plan(SimConfig(n_accounts=120, seed=7, days=7))


def test_same_config_same_plan_other_seed_other_accounts(plan):
    again = make_plan(SimConfig(n_accounts=120, seed=7, days=7))
    assert again.accounts == plan.accounts and again.blocks == plan.blocks
    other = make_plan(SimConfig(n_accounts=120, seed=8, days=7))
    assert not {a.address for a in other.accounts} & {a.address for a in plan.accounts}


def test_accounts_are_derived_from_the_seed(plan):
    from eth_account import Account

    assert plan.accounts[5].address == Account.from_key(account_key(7, 5)).address.lower()
    assert plan.keys[5] == account_key(7, 5)


def test_every_typology_and_role_is_present_with_consistent_labels(plan):
    roles = {a.role for a in plan.accounts}
    assert set(ANOMALOUS_ROLES) <= roles
    assert {"exchange", "merchant", "casual", "bot", "payroll", "faucet"} <= roles
    for a in plan.accounts:
        assert a.true_label == (1 if a.role in ANOMALOUS_ROLES else 0)
        assert a.role in ANOMALOUS_ROLES + NORMAL_ROLES
    flipped = sum(a.label != a.true_label for a in plan.accounts)
    assert flipped == round(0.03 * 120)
    share = sum(a.true_label for a in plan.accounts) / 120
    assert 0.15 <= share <= 0.35


def test_every_account_transacts(plan):
    seen = set()
    for block in plan.blocks:
        for t in block.txs:
            if t.sender != FUNDER:
                seen.add(plan.accounts[t.sender].address)
            if t.to:
                seen.add(t.to)
    assert seen >= {a.address for a in plan.accounts}


def test_blocks_nonces_and_contract_addresses_are_well_formed(plan):
    offsets = [b.offset for b in plan.blocks]
    assert offsets == sorted(set(offsets)) and offsets[0] > 0
    assert all(1 <= len(b.txs) <= plan.config.max_txs_per_block for b in plan.blocks)
    nonces = defaultdict(list)
    for block in plan.blocks:
        for t in block.txs:
            if t.sender == FUNDER:
                assert t.nonce is None and t.to is not None
                continue
            nonces[t.sender].append(t.nonce)
            if t.to is None:
                assert t.created == contract_address(plan.accounts[t.sender].address, t.nonce)
                assert plan.contracts[t.created] == t.sender
    assert all(ns == list(range(len(ns))) for ns in nonces.values())
    assert plan.contracts, "bots deploy contracts"


def test_every_send_is_affordable_from_earlier_blocks(plan):
    """Independent replay: a simulated account spends only what it received in earlier blocks."""
    fee = int(plan.config.max_fee_gwei * GWEI)
    index = {a.address: a.index for a in plan.accounts}
    balance = defaultdict(int)
    for block in plan.blocks:
        received = defaultdict(int)
        for t in block.txs:
            if t.sender != FUNDER:
                balance[t.sender] -= t.value + t.gas * fee
                assert balance[t.sender] >= 0, f"account {t.sender} overspends in block at {block.offset}"
            if t.to in index:
                received[index[t.to]] += t.value
        for i, v in received.items():
            balance[i] += v


def test_a_thousand_accounts_make_about_ten_thousand_transactions():
    plan = make_plan(SimConfig(n_accounts=1000, seed=2))
    assert 9_000 <= plan.n_txs <= 13_000
    assert plan.funding_needed() < 5_000 * 10**18      # fits a default dev account


@pytest.mark.parametrize("kwargs", [dict(n_accounts=10), dict(anomaly_share=0.9), dict(label_noise=0.6),
                                    dict(days=0), dict(max_txs_per_block=5000)])
def test_invalid_config(kwargs):
    with pytest.raises(ConfigError):
        SimConfig(**kwargs)
