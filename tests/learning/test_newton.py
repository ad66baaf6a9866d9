"""The chained Newton model: each pass's step equals pooled Newton whatever the partition, the
receiver's check accepts every honest handoff and rejects scaled, altered and mis-stepped ones,
the bytes are deterministic, and the per-feature contributions add up to the margin."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification

from chainfl.data.scaling import FeatureStats
from chainfl.errors import DataError, LearningError
from chainfl.learning import newton as N
from chainfl.learning.encoding import BinConfig, bin_statistics, sum_counts
from chainfl.learning.evaluate import predict_scores
from chainfl.learning.models import ModelConfig, expected_layout, initial_model_state
from chainfl.storage.codec import decode_model, encode_model


def _data(n=600, d=5, seed=0):
    X, y = make_classification(n_samples=n, n_features=d, n_informative=3, weights=[0.8], random_state=seed)
    X = (X * 100).astype(np.float32)
    X[::7, 0] = 0.0
    return X, y.astype(np.int64)


def _cfg(parts, bins=8, l2=1.0):
    b = BinConfig(max_bins=bins)
    return N.NewtonConfig.from_counts(sum_counts([bin_statistics(X, b) for X, _ in parts]), parts[0][0].shape[1], b, l2)


def _walk(cfg, parts, passes):
    """``passes`` honest passes, every handoff checked; the state and each node's rows reference."""
    s, refs = N.init_state(cfg), {}
    for r in range(passes):
        for k, (X_k, y_k) in enumerate(parts):
            new = N.contribute(cfg, s, X_k, y_k, r)
            assert N.check_handoff(cfg, s, new, len(y_k), r, refs.get(k)) is None
            if r == 0:
                refs[k] = N.rows_reference(cfg, s, new, len(y_k))
            s = new
    return s, refs


def _chain(cfg, parts, passes):
    s = N.init_state(cfg)
    for r in range(passes):
        for X, y in parts:
            s = N.contribute(cfg, s, X, y, r)
    return s


def test_each_pass_is_a_pooled_newton_step_whatever_the_partition():
    X, y = _data()
    order = np.argsort(y, kind="stable")                       # label-skewed: nodes see one class
    skewed = [(X[i], y[i]) for i in np.array_split(order, 4)]
    iid = [(X[i], y[i]) for i in np.array_split(np.arange(len(y)), 4)]
    cfg = _cfg(iid)
    pooled = N.pooled_newton(cfg, X, y, 3)
    for parts in (skewed, iid):
        w = N.weights(cfg, _chain(cfg, parts, 3))
        np.testing.assert_allclose(w, pooled, rtol=1e-8, atol=1e-8)
    p = N.predict_proba(cfg, _chain(cfg, iid, 3), X)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, p) > 0.9


def test_honest_handoffs_pass_and_bad_ones_are_named():
    X, y = _data()
    parts = [(X[i], y[i]) for i in np.array_split(np.arange(len(y)), 3)]
    cfg = _cfg(parts)
    s, refs = _walk(cfg, parts, 3)
    X_k, y_k = parts[0]
    ref0, ref1 = refs[0], refs[1]
    honest = N.contribute(cfg, s, X_k, y_k, 3)                 # the first of pass 3: stepped
    assert N.check_handoff(cfg, s, honest, len(y_k), 3, ref0) is None
    assert "pass-0" in N.check_handoff(cfg, s, honest, len(y_k), 3)        # no reference: refused
    boosted = dict(honest, G=honest["G"] * 10, H=honest["H"] * 10)
    assert "scaled contribution" in N.check_handoff(cfg, s, boosted, len(y_k), 3, ref0)
    # flipped labels scaled x10: the gradient sum outgrows the rows claimed
    flipped = N.contribute(cfg, s, X_k, 1 - y_k, 3)
    # labels changed after pass 0: residuals against the labels its pass-0 sums fixed
    assert "its own labels" in N.check_handoff(cfg, s, flipped, len(y_k), 3, ref0)
    assert "exceeds" in N.check_handoff(cfg, s, dict(flipped, G=flipped["G"] * 10), len(y_k), 3, ref0)
    # the same sums claimed for fewer rows, or checked against another node's rows
    assert N.check_handoff(cfg, s, honest, len(y_k) // 20, 3, ref0) is not None
    assert N.check_handoff(cfg, s, honest, len(y_k), 3, ref1) is not None
    wrong_step = dict(honest, w=honest["w"] + 1e-3)
    assert "Newton step" in N.check_handoff(cfg, s, wrong_step, len(y_k), 3, ref0)
    mid = N.contribute(cfg, honest, *parts[1], 3)
    assert N.check_handoff(cfg, honest, mid, len(parts[1][1]), 3, ref1) is None
    moved = dict(mid, w=mid["w"] * 1.01)
    assert "changed mid-pass" in N.check_handoff(cfg, honest, moved, len(parts[1][1]), 3, ref1)
    assert "count" in N.check_handoff(cfg, honest, dict(mid, count=mid["count"] + 1), len(parts[1][1]), 3, ref1)
    assert "pass" in N.check_handoff(cfg, honest, mid, len(parts[1][1]), 4, ref1)
    negative = dict(mid, H=honest["H"] - (mid["H"] - honest["H"]))
    assert N.check_handoff(cfg, honest, negative, len(parts[1][1]), 3, ref1) is not None
    # off-diagonal entries no rows can produce
    H = mid["H"].copy()
    i, j = np.triu_indices(cfg.width)
    off = np.flatnonzero((i != j) & (j != cfg.width - 1))[0]
    H[off] += 50.0
    assert "Cauchy-Schwarz" in N.check_handoff(cfg, honest, dict(mid, H=H), len(parts[1][1]), 3, ref1)


def test_crafted_sums_that_push_where_the_rows_have_no_curvature_are_rejected():
    """Gradient without the curvature rows would add: |dG| = n in every weight, Hessian only on the
    bias. Each entry is within its own bound; the node's pass-0 Gram matrix exposes it."""
    X, y = _data()
    parts = [(X[i], y[i]) for i in np.array_split(np.arange(len(y)), 3)]
    cfg = _cfg(parts)
    s, refs = _walk(cfg, parts, 2)
    X_k, y_k = parts[0]
    n = len(y_k)
    honest = N.contribute(cfg, s, X_k, y_k, 2)
    D = cfg.width
    i, j = np.triu_indices(D)
    dH = np.zeros_like(honest["H"])
    dH[(i == D - 1) & (j == D - 1)] = n / 4
    crafted = dict(honest, G=n * np.sign(honest["w"] + 1e-12), H=dH)
    assert "rows" in N.check_handoff(cfg, s, crafted, n, 2, refs[0])
    # residuals against the labels its pass-0 sums fixed: Z^T p below 0
    ref = refs[0]
    assert int(honest["count"][0]) == 1                                 # the first of its pass: sums = its own
    assert "own labels" in N.check_handoff(cfg, s, dict(honest, G=-ref.label_sums - 1.0), n, 2, ref)
    # the largest residuals toward its own labels (every row confidently wrong, no curvature) pass:
    # a node's rows may be that badly fitted
    worst = dict(honest, G=ref.column_sums - 2 * ref.label_sums, H=np.zeros_like(honest["H"]))
    assert N.check_handoff(cfg, s, worst, n, 2, ref) is None
    # and at pass 0 (w = 0) the sums must be exactly a quarter Gram matrix and half residuals
    init = N.init_state(cfg)
    first = N.contribute(cfg, init, X_k, y_k, 0)
    assert N.check_handoff(cfg, init, first, n, 0) is None
    assert "pass 0" in N.check_handoff(cfg, init, dict(first, G=first["G"] * 1.5), n, 0)
    assert "pass 0" in N.check_handoff(cfg, init, dict(first, H=first["H"] * 0.5), n, 0)


def test_a_rejected_first_handoff_of_a_pass_leaves_the_step_to_the_next():
    X, y = _data()
    parts = [(X[i], y[i]) for i in np.array_split(np.arange(len(y)), 3)]
    cfg = _cfg(parts)
    s, refs = _walk(cfg, parts, 1)
    # handoff 4 (the first of pass 1) was rejected: handoff 5 builds on the pass-0 state and steps
    nxt = N.contribute(cfg, s, *parts[1], N.pass_of(5, 3))
    assert int(nxt["pass"][0]) == 1 and int(nxt["count"][0]) == 1
    np.testing.assert_array_equal(nxt["w"], N.newton_step(cfg, s))
    assert N.check_handoff(cfg, s, nxt, len(parts[1][1]), 1, refs[1]) is None


def test_bytes_are_deterministic_and_the_model_kind_round_trips():
    X, y = _data()
    parts = [(X[i], y[i]) for i in np.array_split(np.arange(len(y)), 2)]
    cfg = _cfg(parts)
    a, b = _chain(cfg, parts, 2), _chain(cfg, parts, 2)
    meta = {"kind": "handoff"}
    assert encode_model(a, meta) == encode_model(b, meta)
    model = ModelConfig(kind="newton", newton=cfg.to_dict())
    assert ModelConfig.from_dict(model.to_dict()) == model
    layout = expected_layout(model, X.shape[1])
    assert list(layout) == ["w", "G", "H", "count", "pass"]
    state, _ = decode_model(encode_model(a, meta), layout)
    np.testing.assert_array_equal(predict_scores(model, state, X), N.predict_proba(cfg, a, X))
    init = initial_model_state(model, X.shape[1])
    assert all(np.all(v == 0) for v in init.values())
    with pytest.raises(LearningError, match="newton settings given"):
        ModelConfig(kind="mlp", newton=cfg.to_dict())
    with pytest.raises(LearningError, match="encoder"):
        ModelConfig(kind="newton")


def test_contributions_add_up_to_the_margin():
    X, y = _data()
    cfg = _cfg([(X, y)])
    s = _chain(cfg, [(X, y)], 2)
    contrib, base = N.contributions(cfg, s, X[:50])
    assert contrib.shape == (50, X.shape[1])
    np.testing.assert_allclose(base + contrib.sum(1), N.predict_margin(cfg, s, X[:50]), rtol=1e-10, atol=1e-10)
    zero_contrib, _ = N.contributions(cfg, s, np.zeros((1, X.shape[1]), np.float32))
    assert np.all(zero_contrib == 0)


def test_grid_counts_in_statistics_give_the_same_encoder_and_refuse_tampering():
    X, y = _data()
    names = [f"f{i}" for i in range(X.shape[1])]
    halves = np.array_split(np.arange(len(y)), 2)
    stats = [FeatureStats.compute(X[h], names, with_grid=True) for h in halves]
    merged = FeatureStats.merge(stats)
    direct = _cfg([(X[h], y[h]) for h in halves], bins=16)
    from chainfl.agents.setup import newton_config

    assert newton_config(stats) == direct
    assert FeatureStats.from_dict(stats[0].to_dict()) == stats[0]
    assert merged.grid_counts().sum() == len(y) * X.shape[1]
    d = stats[0].to_dict()
    d["grid"]["cells"][0][2] += 1                      # counts no longer add up to the rows
    with pytest.raises(DataError, match="grid counts"):
        FeatureStats.from_dict(d)
    good = stats[0].to_dict()["grid"]
    for bad in ("x", [1, 2], {**good, "cells": [[0, 0, 2**70]]}, {**good, "mantissa_bits": float("inf")},
                {**good, "cells": good["cells"] + [[1, 5, 2**62]] * 4}, {**good, "cells": [[0, 0, 1.9]]},
                {**good, "cells": [[True, 0, 1]]}, {**good, "cells": "abc"}):
        with pytest.raises(DataError, match="malformed feature statistics"):
            FeatureStats.from_dict({**stats[0].to_dict(), "grid": bad})
    plain = FeatureStats.compute(X, names)
    assert "grid" not in plain.to_dict()
    from chainfl.errors import ConfigError

    with pytest.raises(ConfigError, match="node stats --bins"):
        newton_config([plain])


def test_sums_no_rows_can_give_are_rejected_before_they_break_the_next_pass():
    X, y = _data()
    parts = [(X[i], y[i]) for i in np.array_split(np.arange(len(y)), 3)]
    cfg = _cfg(parts)
    s = N.contribute(cfg, N.init_state(cfg), *parts[0], 0)
    honest = N.contribute(cfg, s, *parts[1], 0)
    assert N.check_handoff(cfg, s, honest, len(parts[1][1]), 0) is None
    # an indefinite block that keeps every entry within Cauchy-Schwarz: +-h on a 3x3 off-diagonal
    # pattern whose eigenvalues go negative
    D = cfg.width
    i, j = np.triu_indices(D)
    pick = [0, 1, 2]
    dH = honest["H"] - s["H"]
    diag = dH[i == j]
    H = honest["H"].copy()
    for a in pick:
        for b in pick:
            if a < b:
                H[np.flatnonzero((i == a) & (j == b))[0]] = s["H"][np.flatnonzero((i == a) & (j == b))[0]] - \
                    0.99 * np.sqrt(diag[a] * diag[b])
    problem = N.check_handoff(cfg, s, dict(honest, H=H), len(parts[1][1]), 0)
    assert problem is not None and "semi-definite" in problem


def test_a_state_without_a_newton_step_still_lets_the_chain_go_on():
    """A colluding receiver may accept sums no rows can give; the next pass then starts from the
    state's own w (a defined rule the receivers and the audit recompute), and reports can score it."""
    X, y = _data()
    cfg = _cfg([(X, y)])
    s = N.contribute(cfg, N.init_state(cfg), X, y, 0)
    broken = dict(s, H=-np.abs(s["H"]))                       # not positive definite
    np.testing.assert_array_equal(N.weights(cfg, broken), broken["w"])
    assert np.all(np.isfinite(N.predict_proba(cfg, broken, X)))
    nxt = N.contribute(cfg, broken, X, y, 1)
    np.testing.assert_array_equal(nxt["w"], broken["w"])
    ref = N.rows_reference(cfg, N.init_state(cfg), s, len(y))
    assert N.check_handoff(cfg, broken, nxt, len(y), 1, ref) is None
