"""Neighbour (isolation) screening: the screening of the screened-* strategies."""

from __future__ import annotations

import numpy as np
import pytest

from chainfl.aggregation import attacks as A
from chainfl.aggregation.screening import ScreenConfig, screen
from chainfl.aggregation.strategies import NEIGHBOUR_SCREEN, Strategy, Update, get_strategy
from chainfl.errors import LearningError

NB = ScreenConfig(method="neighbours")


def skewed_round(n_major=16, n_minor=4, dim=60, seed=0):
    """Label-skew-like round: most nodes move one way; a small group (e.g. the nodes holding almost
    only the positive class) moves together in another direction, 3x as far."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 1, dim).astype(np.float32)
    major, minor = rng.normal(0, 0.1, dim), rng.normal(0, 0.3, dim)
    ups = [(ref + major + rng.normal(0, 0.03, dim)).astype(np.float32) for _ in range(n_major)]
    ups += [(ref + minor + rng.normal(0, 0.04, dim)).astype(np.float32) for _ in range(n_minor)]
    return ref, ups


def test_honest_minority_cluster_is_not_flagged_but_the_centre_rule_flags_it():
    # prepare
    ref, ups = skewed_round()
    # act
    nb = screen(ups, ref, NB)
    centre = screen(ups, ref, ScreenConfig())
    # assert: the isolation score leaves the group alone, distance-to-one-centre does not
    assert nb.n_flagged == 0
    assert all(centre.flagged[16:])
    assert max(nb.scores[i]["neighbour_ratio"] for i in range(20)) < NB.max_ratio


@pytest.mark.parametrize("attack", ["boosted", "sign-flip", "noise"])
def test_isolated_poisoned_updates_are_flagged(attack):
    ref, ups = skewed_round()
    bad = [2, 9, 17]                                  # two from the majority, one from the minority
    for i in bad:
        if attack == "boosted":
            ups[i] = A.scale_delta(ups[i], ref, 10)
        elif attack == "sign-flip":
            ups[i] = A.sign_flip(ups[i], ref, 10)
        else:
            ups[i] = A.gaussian_noise(ups[i], 0.5, seed=i)
    res = screen(ups, ref, NB)
    assert [i for i, f in enumerate(res.flagged) if f] == bad
    assert all("nearest updates" in res.scores[i]["reasons"][0] for i in bad)


def test_colluders_sending_one_boosted_vector_are_caught_by_the_norm_bound():
    ref, ups = skewed_round()
    boosted = A.scale_delta(ups[0], ref, 30)
    for i in (0, 1, 2):
        ups[i] = boosted.copy()                       # each other's nearest neighbours: distance 0
    res = screen(ups, ref, NB)
    assert res.flagged[:3] == [True] * 3 and res.n_flagged == 3
    assert all(res.scores[i]["neighbour_ratio"] == 0.0 for i in (0, 1, 2))
    assert all("x the median" in res.scores[i]["reasons"][0] for i in (0, 1, 2))


def test_at_most_max_flag_frac_of_a_round_is_flagged_most_isolated_first():
    ref, ups = skewed_round()
    for i, factor in zip((3, 5, 7, 11), (5, 40, 10, 20)):
        ups[i] = A.scale_delta(ups[i], ref, factor)
    capped = screen(ups, ref, ScreenConfig(method="neighbours", max_flag_frac=0.1))   # 2 of 20
    assert [i for i, f in enumerate(capped.flagged) if f] == [5, 11]
    assert "at most 2 flags" in capped.scores[7]["reasons"][-1]
    assert screen(ups, ref, NB).n_flagged == 4                              # uncapped: all four


def test_neighbour_screening_is_order_independent_and_needs_enough_updates():
    ref, ups = skewed_round()
    ups[4] = A.scale_delta(ups[4], ref, 10)
    perm = list(np.random.default_rng(5).permutation(len(ups)))
    a, b = screen(ups, ref, NB), screen([ups[i] for i in perm], ref, NB)
    assert [a.flagged[i] for i in perm] == b.flagged and a.flagged[4]
    assert [a.scores[i]["neighbour_ratio"] for i in perm] == [s["neighbour_ratio"] for s in b.scores]
    assert screen(ups[:3], ref, NB).n_flagged == 0      # below min_updates: no statistics


def test_config_is_validated():
    with pytest.raises(LearningError, match="screening method"):
        ScreenConfig(method="vibes")
    with pytest.raises(LearningError, match="k_neighbours"):
        ScreenConfig(method="neighbours", k_neighbours=0)
    with pytest.raises(LearningError, match="max_flag_frac"):
        ScreenConfig(max_flag_frac=1.5)


def test_screened_fedavg_uses_neighbour_screening_and_old_specs_still_load():
    s = get_strategy("screened-fedavg")
    assert s.screening == NEIGHBOUR_SCREEN and s.spec()["screening"]["method"] == "neighbours"
    # a spec recorded before the neighbour method existed rebuilds the centre screening it used
    old = {"name": "screened-fedavg", "rule": "fedavg", "params": {}, "min_updates": 1,
           "weighting": "samples", "clip_factor": 0.0, "server_lr": 1.0, "server_momentum": 0.0,
           "screening": {"z_max": 3.5, "min_ratio": 1.5, "min_cosine": -0.2, "min_updates": 4,
                         "size_exponent": 0.0}}
    assert Strategy.from_spec(old).screening == ScreenConfig()


def test_screened_fedavg_drops_a_boosted_node_and_keeps_the_honest_minority():
    ref, ups = skewed_round()
    ups[1] = A.scale_delta(ups[1], ref, 10)
    updates = [Update(f"n{i:02d}", bytes([i]) * 32, u, 50) for i, u in enumerate(ups)]
    res = get_strategy("screened-fedavg").aggregate(updates, reference=ref)
    assert res.flagged == ["n01"]
    assert {f"n{i:02d}" for i in range(16, 20)} <= set(res.included)
    clean = [u for u in updates if u.node != "n01"]
    assert res.vector.tobytes() == get_strategy("fedavg").aggregate(clean, ref).vector.tobytes()


@pytest.mark.parametrize("name", ["multi-krum", "krum", "screened-multi-krum"])
def test_krum_strategies_work_with_one_or_two_nodes(name):
    # a federated task with 1-2 nodes must still aggregate: their weighted mean (nothing to rank)
    ref = np.zeros(3, np.float32)
    ups = [Update("a", b"a", np.array([1, 2, 3], np.float32), 1),
           Update("b", b"b", np.array([4, 5, 6], np.float32), 2)]
    res = get_strategy(name).aggregate(ups, reference=ref)
    np.testing.assert_allclose(res.vector, [3, 4, 5])
    assert res.included == ["a", "b"]
    assert get_strategy(name).aggregate(ups[:1], reference=ref).vector.tolist() == [1, 2, 3]
    # with enough updates Krum selects again (the far one is left out)
    ups += [Update("c", b"c", np.array([2, 3, 4], np.float32), 1),
            Update("d", b"d", np.array([3, 4, 5], np.float32), 1),
            Update("e", b"e", np.array([400, 500, 600], np.float32), 1)]
    assert "e" not in get_strategy(name).aggregate(ups, reference=ref).included


def test_the_flag_cap_still_allows_one_flag_in_a_small_round():
    ref, ups = skewed_round(n_major=4, n_minor=0)
    ups[0] = A.scale_delta(ups[0], ref, 10)
    res = screen(ups, ref, NEIGHBOUR_SCREEN)               # floor(0.2 * 4) = 0, but one is allowed
    assert res.flagged == [True, False, False, False]
