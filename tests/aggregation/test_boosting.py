"""The gbdt round decision: bounds, the label-consistency screen (with its small-node allowance),
abandoning, and the recorded strategy's round trip."""

from __future__ import annotations

import numpy as np
import pytest

from chainfl.aggregation.boosting import (BoostingStrategy, get_boosting_strategy, strategy_from_spec)
from chainfl.aggregation.decision import Candidate, decide_round, reason_code
from chainfl.aggregation.strategies import Strategy
from chainfl.errors import ConfigError
from chainfl.learning import gbdt as G

CFG = G.GBDTConfig(n_features=3, n_trees=6, depth=2, concurrent_trees=2)


def _data(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32) * 5
    y = (X[:, 0] + 0.3 * rng.normal(size=n) * 5 > 2).astype(np.int64)
    return X, y


def _candidates(state, parts, names, step=1):
    out = []
    for name, (X, y) in zip(names, parts):
        vec = G.node_update(CFG, state, X, y)
        meta = {"kind": "update", "task": 1, "node": name, "step": step}
        out.append(Candidate(name, name.encode().ljust(32, b"\0"), len(y), vector=vec, meta=meta))
    return out


def _grown(parts, rounds: int):
    state = G.init_state(CFG)
    for _ in range(rounds):
        state = G.coordinator_step(CFG, state, G.sum_updates([G.node_update(CFG, state, X, y) for X, y in parts]))
    return state


def test_decision_equals_the_plain_sum_and_is_order_independent():
    parts = [_data(s) for s in range(4)]
    names = [f"0x{i:040x}" for i in range(4)]
    state = _grown(parts, 1)
    strategy = BoostingStrategy(name="sum", screen=None)
    cands = _candidates(state, parts, names)
    a = decide_round(cands, strategy, task_id=1, round_=1, reference=None, boosting=(CFG, state))
    b = decide_round(cands[::-1], strategy, task_id=1, round_=1, reference=None, boosting=(CFG, state))
    want = G.coordinator_step(CFG, state, G.sum_updates([c.vector for c in cands]))
    assert a.included == sorted(names) and not a.flagged and not a.abandoned
    for k in want:
        assert a.state[k].tobytes() == b.state[k].tobytes() == want[k].tobytes()


def test_scaled_and_fabricated_histograms_break_the_bounds():
    parts = [_data(s) for s in range(3)]
    names = [f"0x{i:040x}" for i in range(3)]
    state = _grown(parts, 1)
    cands = _candidates(state, parts, names)
    boosted = Candidate(names[1], cands[1].digest, cands[1].samples, vector=cands[1].vector * np.float32(10),
                        meta=cands[1].meta)
    noisy = Candidate(names[2], cands[2].digest, cands[2].samples, vector=cands[2].vector + np.float32(0.5),
                      meta=cands[2].meta)
    out = decide_round([cands[0], boosted, noisy], BoostingStrategy(screen=None), task_id=1, round_=1,
                       reference=None, boosting=(CFG, state))
    assert out.included == [names[0]]
    assert {reason_code(r) for r in out.flagged.values()} == {"bounds"} and set(out.flagged) == set(names[1:])


def test_claimed_rows_must_match_the_histograms():
    parts = [_data(s) for s in range(2)]
    names = [f"0x{i:040x}" for i in range(2)]
    state = _grown(parts, 1)
    c = _candidates(state, parts, names)
    lie = Candidate(names[1], c[1].digest, c[1].samples + 50, vector=c[1].vector, meta=c[1].meta)
    out = decide_round([c[0], lie], BoostingStrategy(screen=None), task_id=1, round_=1, reference=None,
                       boosting=(CFG, state))
    assert reason_code(out.flagged[names[1]]) == "bounds" and "rows" in out.flagged[names[1]]


def test_everything_flagged_abandons_the_round():
    parts = [_data(0)]
    state = _grown(parts, 1)
    c = _candidates(state, parts, ["0x" + "1" * 40])[0]
    bad = Candidate(c.node, c.digest, c.samples, vector=-c.vector, meta=c.meta)
    out = decide_round([bad], BoostingStrategy(screen=None), task_id=1, round_=1, reference=None,
                       boosting=(CFG, state))
    assert out.abandoned and out.state is None and "left after the bounds" in out.abandon_reason


def test_flipper_is_screened_but_a_tiny_honest_node_is_not():
    parts = [_data(s, 400) for s in range(5)]
    X, y = _data(9, 400)
    flipper = (X, 1 - y)
    Xs, ys = _data(11, 4)
    ys = ys.copy()
    ys[:3] = 1 - ys[:3]          # 4 rows the model mostly gets wrong (chi^2 1.47, like the honest
    tiny = (Xs, ys)              # 4-row node at 1.43 on eth_fraud): noise at that size, not a flipper
    names = [f"0x{i:040x}" for i in range(7)]
    state = _grown(parts, 1 + G.ConsistencyScreen().warmup_rounds + 1)
    assert G.phase(state) == "grow"
    cands = _candidates(state, parts + [flipper, tiny], names)
    flat = BoostingStrategy(screen=G.ConsistencyScreen(min_rows=0, small_z=0.0))
    default = BoostingStrategy()
    out_flat = decide_round(cands, flat, task_id=1, round_=1, reference=None, boosting=(CFG, state))
    out = decide_round(cands, default, task_id=1, round_=1, reference=None, boosting=(CFG, state))
    assert names[5] in out.flagged and reason_code(out.flagged[names[5]]) == "screening"
    assert names[6] in out_flat.flagged and names[6] not in out.flagged
    assert not set(out.flagged) & set(names[:5])


def test_recorded_strategy_round_trips_and_names_map():
    s = get_boosting_strategy("screened-fedavg")
    assert s.name == "screened-sum" and strategy_from_spec(s.spec()) == s
    assert get_boosting_strategy("fedavg").screen is None
    assert isinstance(strategy_from_spec(Strategy(name="fedavg").spec()), Strategy)
    with pytest.raises(ConfigError, match="median"):
        get_boosting_strategy("median")


def test_the_small_node_test_raises_the_bar_for_small_nodes_only_and_is_off_in_old_specs():
    z = G.ConsistencyScreen(min_rows=0, small_z=3.0)
    assert G.consistency_limit(z, 4) == pytest.approx(G.CALIBRATED + 3.0 / 2)       # 2.0: the 4-row node's 1.43 passes
    assert G.consistency_limit(z, 100) == z.threshold                               # big nodes: the flat threshold
    assert G.consistency_limit(z, 0) == float("inf")
    legacy = {k: v for k, v in z.to_dict().items() if k != "small_z"}               # a spec recorded before small_z
    assert G.ConsistencyScreen.from_dict(legacy).small_z == 0.0
    assert G.ConsistencyScreen.from_dict(z.to_dict()) == z
