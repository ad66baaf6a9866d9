"""Feature computation (pure): hand-computed values, resumability, serialisation, schema."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from chainfl.data import schema
from chainfl.data.features import FeatureResult, FeatureState, Tx, contract_address
from chainfl.data.simplan import SimConfig, make_plan

E = 10**18
A, B, C = "0x" + "a" * 40, "0x" + "b" * 40, "0x" + "c" * 40


def _state(txs, contracts=()):
    state = FeatureState()
    for c in contracts:
        state.contracts[c] = True
    return state.add_all(txs, next_block=max(t.block for t in txs) + 1)


def test_hand_computed_features():
    k = contract_address(A, 2)
    txs = [Tx(1, 0, A, B, 1 * E), Tx(2, 120, A, B, 3 * E), Tx(3, 600, A, None, E // 2, created=k),
           Tx(4, 1200, A, k, E // 4), Tx(4, 1200, C, A, 10 * E), Tx(5, 1800, B, C, 2 * E)]
    state = _state(txs)
    fa = state.features(A)
    assert fa["Sent tnx"] == 3 and fa["Received Tnx"] == 1 and fa["Number of Created Contracts"] == 1
    assert fa["Unique Sent To Addresses"] == 2 and fa["Unique Received From Addresses"] == 1
    assert fa["min val sent"] == 1 and fa["max val sent"] == 3 and fa["avg val sent"] == 2
    assert fa["total Ether sent"] == 4
    assert fa["total ether sent contracts"] == 0.75            # creation value + call value
    assert fa["min value sent to contract"] == 0.25 and fa["max val sent to contract"] == 0.5
    assert fa["Avg min between sent tnx"] == pytest.approx((1200 - 0) / 60 / 2)
    assert fa["Time Diff between first and last (Mins)"] == 20
    assert fa["total ether balance"] == 10 - 4 - 0.75
    assert fa["total transactions (including tnx to create contract"] == 3 + 1 + 1
    fb = state.features(B)
    assert fb["Received Tnx"] == 2 and fb["Avg min between received tnx"] == 2
    assert fb["avg val received"] == 2 and fb["Sent tnx"] == 1 and fb["Avg min between sent tnx"] == 0
    assert list(fa) == list(schema.DERIVED_FROM_CHAIN)
    assert set(schema.DERIVED_FROM_CHAIN) <= set(schema.FEATURES)


def test_dataset_keeps_labelled_accounts_in_first_seen_order_and_leaves_contracts_out():
    k = contract_address(A, 0)
    result = FeatureResult(_state([Tx(1, 0, A, None, 0, created=k), Tx(2, 60, A, k, 5), Tx(3, 90, C, B, 7)]))
    assert result.addresses == [A, k, B, C]
    ds = result.dataset()
    assert ds.ids == [A, B, C] and (ds.y == -1).all() and ds.X.shape == (3, 22)
    labelled = result.dataset({C.upper().replace("0X", "0x"): 1, A: 0})
    assert labelled.ids == [A, C] and labelled.y.tolist() == [0, 1]
    np.testing.assert_array_equal(result.first_seen([A, B]), [1, 3])


@pytest.fixture(scope="module")
def plan_txs():
    plan = make_plan(SimConfig(n_accounts=60, seed=3, days=3))
    return plan, plan.txs(start_time=1_700_000_000)


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(0, 40), max_size=4))
def test_any_split_into_passes_with_json_round_trips_equals_one_pass(plan_txs, cuts):
    plan, txs = plan_txs
    whole = _state(txs, plan.contracts)
    last = txs[-1].block
    bounds = sorted({min(c, last) for c in cuts}) + [last + 1]
    state = FeatureState()
    state.contracts.update({c: True for c in plan.contracts})
    start = 0
    for end in bounds:
        state.add_all([t for t in txs if start <= t.block < end], next_block=end)
        state = FeatureState.loads(json.dumps(json.loads(state.dumps())))      # travels as JSON
        start = end
    assert state.to_dict() == whole.to_dict()
    assert FeatureResult(state).dataset().X.tobytes() == FeatureResult(whole).dataset().X.tobytes()


def test_features_agree_with_an_independent_pandas_computation(plan_txs):
    plan, txs = plan_txs
    result = FeatureResult(_state(txs, plan.contracts))
    frame = pd.DataFrame([t.__dict__ for t in txs if t.to is not None])
    frame["eth"] = frame["value"] / E
    to_eoa = frame[~frame["to"].isin(set(plan.contracts))]
    for address in result.dataset().ids[:40]:
        f = result.state.features(address)
        sent = frame[frame.sender == address]
        recv = frame[frame.to == address]
        sent_eoa = to_eoa[to_eoa.sender == address]
        assert f["Sent tnx"] == len(sent)
        assert f["Received Tnx"] == len(recv)
        assert f["Unique Sent To Addresses"] == sent.to.nunique()
        assert f["Unique Received From Addresses"] == recv.sender.nunique()
        assert f["total ether received"] == pytest.approx(recv.eth.sum(), rel=1e-12, abs=1e-12)
        assert f["total Ether sent"] == pytest.approx(sent_eoa.eth.sum(), rel=1e-12, abs=1e-12)
        if len(recv) > 1:
            gaps = np.diff(np.sort(recv.timestamp.to_numpy())) / 60
            assert f["Avg min between received tnx"] == pytest.approx(gaps.mean())
        if len(sent_eoa):
            assert f["max val sent"] == pytest.approx(sent_eoa.eth.max())


def test_state_version_is_checked():
    from chainfl.errors import DataError

    with pytest.raises(DataError, match="version"):
        FeatureState.from_dict({"version": 99})


def test_chain_computable_splits_a_feature_list_in_order():
    names = ["total Ether sent", "Total ERC20 tnxs", " Sent tnx ", schema.MISSING_FLAG, "my own column",
             "Avg min between sent tnx"]
    assert schema.chain_computable(names) == (["total Ether sent", " Sent tnx ", "Avg min between sent tnx"],
                                              ["Total ERC20 tnxs", schema.MISSING_FLAG, "my own column"])
    assert schema.chain_computable(schema.DERIVED_FROM_CHAIN) == (list(schema.DERIVED_FROM_CHAIN), [])
    computable, other = schema.chain_computable(schema.FEATURES)
    assert (len(computable), len(other)) == (22, 23) and other == list(schema.ERC20_FEATURES)
    # exactly the columns extract_features computes
    state = FeatureState().add_all([Tx(1, 0, A, B, E)], next_block=2)
    assert schema.chain_computable(state.features(A)) == (list(state.features(A)), [])
    message = schema.not_computable_message(other, len(schema.FEATURES))
    assert message.startswith("23 of 45 features cannot be computed from a chain's blocks: 'Total ERC20 tnxs'")
    assert "(+18 more)" in message and "chainfl.data.schema.DERIVED_FROM_CHAIN (22 features" in message
