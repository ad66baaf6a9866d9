"""Screening, strategies and attacks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chainfl.aggregation import attacks as A
from chainfl.aggregation.screening import ScreenConfig, robust_z, screen
from chainfl.aggregation.strategies import STRATEGIES, Strategy, Update, get_strategy
from chainfl.errors import LearningError


def honest_round(n=20, dim=50, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 1, dim).astype(np.float32)
    direction = rng.normal(0, 0.1, dim)
    ups = [(ref + direction + rng.normal(0, 0.05, dim)).astype(np.float32) for _ in range(n)]
    return ref, ups


def test_robust_z_hand_computed():
    # median 3, |dev| = [2,1,0,1,97] -> MAD 1 -> scale 1.4826
    z = robust_z([1, 2, 3, 4, 100])
    np.testing.assert_allclose(z, np.array([-2, -1, 0, 1, 97]) / 1.4826)


def test_screen_flags_boosted_and_sign_flipped_only():
    ref, ups = honest_round()
    ups[3] = A.scale_delta(ups[3], ref, 10)
    ups[7] = A.sign_flip(ups[7], ref, 10)
    res = screen(ups, ref)
    assert [i for i, f in enumerate(res.flagged) if f] == [3, 7]
    assert any("norm" in r for r in res.scores[3]["reasons"])
    assert res.scores[7]["cosine"] < 0


def test_screen_flags_nothing_in_an_honest_round():
    for seed in range(5):
        ref, ups = honest_round(seed=seed)
        assert screen(ups, ref).n_flagged == 0


def test_screen_is_order_independent():
    ref, ups = honest_round()
    ups[0] = A.gaussian_noise(ups[0], 1.0, seed=1)
    perm = list(np.random.default_rng(3).permutation(len(ups)))
    a = screen(ups, ref)
    b = screen([ups[i] for i in perm], ref)
    assert [a.flagged[i] for i in perm] == b.flagged
    assert a.flagged[0]


def test_screen_needs_enough_updates():
    ref, ups = honest_round(n=3)
    ups[0] = A.scale_delta(ups[0], ref, 100)
    assert screen(ups, ref, ScreenConfig(min_updates=4)).n_flagged == 0


def updates_from(ups, prefix="n"):
    return [Update(f"{prefix}{i:02d}", bytes([i]) * 32, u, 10 + i) for i, u in enumerate(ups)]


def test_screened_fedavg_excludes_and_reports():
    ref, ups = honest_round()
    ups[5] = A.scale_delta(ups[5], ref, 10)
    res = get_strategy("screened-fedavg").aggregate(updates_from(ups), reference=ref)
    assert res.flagged == ["n05"]
    assert "n05" not in res.included and len(res.included) == 19
    assert res.scores["n05"]["reasons"]
    clean = [u for i, u in enumerate(updates_from(ups)) if i != 5]
    assert res.vector.tobytes() == get_strategy("fedavg").aggregate(clean, ref).vector.tobytes()


def test_plain_fedavg_is_dragged_by_a_boosted_update():
    ref, ups = honest_round()
    clean = get_strategy("fedavg").aggregate(updates_from(ups), ref).vector
    ups[5] = A.scale_delta(ups[5], ref, 50)
    dirty = get_strategy("fedavg").aggregate(updates_from(ups), ref).vector
    robust = get_strategy("multi-krum").aggregate(updates_from(ups), ref)
    assert np.linalg.norm(dirty - clean) > 5 * np.linalg.norm(robust.vector - clean)
    assert "n05" not in robust.included


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_is_deterministic_and_rebuilt_from_its_spec(name):
    ref, ups = honest_round(n=12)
    updates = updates_from(ups)
    s = get_strategy(name)
    spec = json.loads(json.dumps(s.spec()))
    s2 = Strategy.from_spec(spec)
    assert s2 == s
    a = s.aggregate(updates, reference=ref)
    b = s2.aggregate(updates[::-1], reference=ref)
    assert a.vector.tobytes() == b.vector.tobytes()
    assert a.included == b.included and a.flagged == b.flagged


def test_min_updates_and_errors():
    ref, ups = honest_round(n=3)
    with pytest.raises(LearningError, match="needs 5 updates"):
        get_strategy("fedavg", min_updates=5).aggregate(updates_from(ups), ref)
    with pytest.raises(LearningError, match="unknown strategy"):
        get_strategy("nope")
    with pytest.raises(LearningError, match="submitted twice"):
        get_strategy("fedavg").aggregate(updates_from(ups) + updates_from(ups[:1]), ref)
    with pytest.raises(LearningError, match="reference="):
        get_strategy("clipped-fedavg").aggregate(updates_from(ups))


def test_server_lr_scales_the_step():
    ref = np.zeros(2, np.float32)
    ups = [Update("a", b"a", np.array([2, 4], np.float32), 1)]
    out = get_strategy("fedavg", server_lr=1.5).aggregate(ups, ref).vector
    np.testing.assert_array_equal(out, np.array([3, 6], np.float32))


def test_clipped_fedavg_bounds_a_boosted_update():
    ref, ups = honest_round()
    ups[0] = A.scale_delta(ups[0], ref, 100)
    out = get_strategy("clipped-fedavg").aggregate(updates_from(ups), ref).vector
    norms = sorted(np.linalg.norm(u.astype(np.float64) - ref) for u in ups)
    assert np.linalg.norm(out - ref) <= 2.0 * np.median(norms) + 1e-4


# ---- attacks -------------------------------------------------------------------------------------
def test_choose_malicious_is_seeded_and_sized():
    a = A.choose_malicious(50, 0.2, seed=1)
    assert len(a) == 10 and a == sorted(set(a)) and a == A.choose_malicious(50, 0.2, seed=1)
    assert a != A.choose_malicious(50, 0.2, seed=2)
    assert A.choose_malicious(50, 0.0) == []


def test_model_attacks_hand_computed():
    ref, v = np.array([1, 1], np.float32), np.array([2, 3], np.float32)
    np.testing.assert_array_equal(A.scale_delta(v, ref, 10), [11, 21])
    np.testing.assert_array_equal(A.sign_flip(v, ref, 10), [-9, -19])
    np.testing.assert_array_equal(A.free_rider(ref), ref)
    np.testing.assert_array_equal(A.label_flip(np.array([0, 1, 1])), [1, 0, 0])
    n1 = A.gaussian_noise(v, 1.0, seed=4)
    assert n1.tobytes() == A.gaussian_noise(v, 1.0, seed=4).tobytes() and not np.array_equal(n1, v)
    y = np.array([1, 0])
    # boosted model replacement: trains on flipped labels AND scales its step
    boosted = A.AttackConfig("boosted", factor=3)
    assert boosted.poisons_data and boosted.poisons_model
    np.testing.assert_array_equal(A.poison_update(boosted, v, ref), [4, 7])
    np.testing.assert_array_equal(A.poison_labels(boosted, y), [0, 1])
    # amplified: an honest step scaled up, labels untouched
    amplified = A.AttackConfig("amplified", factor=3)
    assert not amplified.poisons_data and amplified.poisons_model
    np.testing.assert_array_equal(A.poison_update(amplified, v, ref), [4, 7])
    np.testing.assert_array_equal(A.poison_labels(amplified, y), y)
    flip = A.AttackConfig("label-flip")
    np.testing.assert_array_equal(A.poison_labels(flip, y), [0, 1])
    np.testing.assert_array_equal(A.poison_update(flip, v, ref), v)
    with pytest.raises(LearningError, match="unknown attack"):
        A.AttackConfig("teleport")


def test_server_momentum_is_heavy_ball_equal_to_fedavgm():
    # FedAvgM: v = m*v + delta ; w += lr*v   ==   w_next = w + lr*delta + m*(w - w_prev)
    rng = np.random.default_rng(0)
    s = get_strategy("fedavg", server_lr=0.5, server_momentum=0.9)
    w, w_prev, v = np.zeros(4), None, np.zeros(4)
    w32 = np.zeros(4, np.float32)
    for r in range(5):
        target = rng.normal(0, 1, 4).astype(np.float32)
        delta = target.astype(np.float64) - w32
        v = 0.9 * v + delta
        w = w32 + 0.5 * v
        out = s.aggregate([Update("a", b"a", target, 1)], reference=w32, previous=w_prev).vector
        np.testing.assert_allclose(out, w, rtol=1e-5, atol=1e-6)
        w_prev, w32 = w32, out
        v = (w32.astype(np.float64) - w_prev) / 0.5     # re-sync on the float32 trajectory


def test_opposite_direction_alone_is_not_flagged():
    # under label skew an honest node holding only one class may move against the centre; with
    # an ordinary step size that is not evidence of an attack
    rng = np.random.default_rng(1)
    ref = np.zeros(50, np.float32)
    common = rng.normal(0, 0.1, 50)
    ups = [(common + rng.normal(0, 0.1, 50)).astype(np.float32) for _ in range(20)]   # heterogeneous
    ups[4] = (-0.3 * ups[4]).astype(np.float32)               # small step against the centre
    res = screen(ups, ref)
    assert res.scores[4]["cosine"] < -0.2 and not res.flagged[4]
    ups[4] = (-10 * ups[4]).astype(np.float32)                # a large step against it: flagged
    assert screen(ups, ref).flagged[4]


def test_size_exponent_compares_norms_per_sample_count():
    ref, ups = honest_round()
    # node 0 trained on 16x the rows and moved 4x as far: an outlier by raw norm only
    ups[0] = (ref + 4.0 * (ups[0] - ref)).astype(np.float32)
    sizes = [1600] + [100] * (len(ups) - 1)
    raw = screen(ups, ref, ScreenConfig(), n_samples=sizes).scores[0]["reasons"]
    per_size = screen(ups, ref, ScreenConfig(size_exponent=0.5), n_samples=sizes).scores[0]["reasons"]
    assert any(r.startswith("norm") for r in raw)
    assert not any(r.startswith("norm") for r in per_size)      # (its distance may still stand out)
    with pytest.raises(LearningError, match="sample counts"):
        screen(ups, ref, ScreenConfig(size_exponent=0.5), n_samples=[1])
